"""The family-neutral core of the zoo: the registry, weight files, checkpoints, the LightningModule base,
optimizers, reliability, checks and shared figures. It imports no family (see docs/ARCHITECTURE.md)."""

__version__ = "0.1.0"  # the version of vision-zoo (zoo.__version__), kept here so that the core needs no import of zoo

"""The family-neutral core of the zoo: the registry, weight files, checkpoints, the LightningModule base,
optimizers, reliability, checks and shared figures. It imports no family (see docs/ARCHITECTURE.md)."""

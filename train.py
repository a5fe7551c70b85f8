"""Train, validate, test or predict with any model and datamodule of the zoo.

    python train.py fit --config configs/classification/mnist.yaml
    python train.py test --config configs/classification/mnist.yaml --ckpt_path path/to/best.ckpt
    python train.py fit --help

A mistake in what you give (an argument, a file, a checkpoint) is printed as one paragraph with the fix, exit
code 2; add --debug (or set ZOO_DEBUG=1) for the traceback.
"""

from zoo.cli import run

if __name__ == "__main__":
    raise SystemExit(run())

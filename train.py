"""Train, validate, test or predict with any model and datamodule of the zoo.

    python train.py fit --config configs/classification/mnist.yaml
    python train.py test --config configs/classification/mnist.yaml --ckpt_path path/to/best.ckpt
    python train.py fit --help

A mistake in what you give (an argument, a file, a checkpoint) is printed as one paragraph with the fix, exit
code 2; add --debug (or set ZOO_DEBUG=1) for the traceback.
"""

import sys

from zoo.commands import is_overview_request, overview

if __name__ == "__main__":
    if is_overview_request(sys.argv[1:]):  # answered without importing Lightning (seconds) at all
        print(overview())
        raise SystemExit(0)
    from zoo.cli import run

    raise SystemExit(run())

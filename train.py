"""Train, validate, test or predict with any model and datamodule of the zoo.

    python train.py fit --config configs/classification/mnist.yaml
    python train.py test --config configs/classification/mnist.yaml --ckpt_path path/to/best.ckpt
    python train.py fit --help
"""

from zoo.cli import main

if __name__ == "__main__":
    main()

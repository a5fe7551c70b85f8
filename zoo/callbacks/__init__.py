"""Lightning callbacks: sample grids of generative models, their prediction writer, and
interpretation grids (Grad-CAM, saliency) logged during training."""

from zoo.callbacks.interpret import InterpretationCallback
from zoo.generative.callbacks import GenerativePredictionWriter, SampleGridCallback

__all__ = ["GenerativePredictionWriter", "InterpretationCallback", "SampleGridCallback"]

"""Looking inside the networks: activations and filters, top-activating patches, attribution maps
(saliency, SmoothGrad, guided backprop, occlusion, CAM, Grad-CAM), class-model visualization,
DeepDream, feature inversion, adversarial examples, texture synthesis / style transfer, and
feature-space neighbours. Command line: ``python -m zoo.interpret <method> --help``.

Every function takes a plain network or an :class:`~zoo.classification.ImageClassifier` and a
normalized batch ``(N, C, H, W)``; layers are named as in ``zoo.classification.summary``
(``features.0``); see :func:`layer_names`.
"""

from zoo.interpret.adversarial import (
    AttackResult,
    UniversalPerturbation,
    fgsm,
    iterative_attack,
    perturbation_success,
    universal_perturbation,
)
from zoo.interpret.attribution import cam, default_cam_layer, grad_cam, guided_backprop, occlusion, saliency, smoothgrad
from zoo.interpret.layers import (
    ReceptiveField,
    TopPatches,
    UnknownLayerError,
    activations,
    first_layer_filters,
    get_layer,
    layer_names,
    layer_table,
    receptive_field,
    top_activating_patches,
)
from zoo.interpret.neighbours import embed, nearest_neighbours, precision_at_k, tsne
from zoo.interpret.plotting import denormalize, plot_attribution, plot_grid, plot_tsne, save_figure
from zoo.interpret.style import gram_matrix, style_loss, style_transfer, synthesize_texture
from zoo.interpret.visualize import Optimized, class_model, deep_dream, invert_features

__all__ = [
    "AttackResult", "Optimized", "ReceptiveField", "TopPatches", "UniversalPerturbation", "UnknownLayerError",
    "activations", "cam", "class_model", "deep_dream", "default_cam_layer", "denormalize", "embed", "fgsm",
    "first_layer_filters", "get_layer", "grad_cam", "gram_matrix", "guided_backprop", "invert_features",
    "iterative_attack", "layer_names", "layer_table", "nearest_neighbours", "occlusion", "perturbation_success",
    "plot_attribution", "plot_grid", "plot_tsne", "precision_at_k", "receptive_field", "saliency", "save_figure",
    "smoothgrad", "style_loss", "style_transfer", "synthesize_texture", "top_activating_patches", "tsne",
    "universal_perturbation",
]

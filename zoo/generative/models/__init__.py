"""Generative networks: one file per family; importing this package registers them all (family ``"generative"``).

Each builder returns one network object: an :class:`~zoo.generative.models.autoencoder.EncoderDecoder`
(``.encoder``, ``.decoder``) for the autoencoders and the VAE, a
:class:`~zoo.generative.models.gan.GeneratorDiscriminator` (``.generator``, ``.discriminator``) for the GANs.
Plain ``nn.Module``s: importable and usable without Lightning.
"""

from zoo.generative.models import autoencoder, dcgan, gan  # noqa: F401
from zoo.generative.models.autoencoder import ConvDecoder, ConvEncoder, EncoderDecoder, MLPDecoder, MLPEncoder
from zoo.generative.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init
from zoo.generative.models.gan import GeneratorDiscriminator, MLPDiscriminator, MLPGenerator

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "EncoderDecoder",
    "GeneratorDiscriminator",
    "MLPDecoder",
    "MLPDiscriminator",
    "MLPEncoder",
    "MLPGenerator",
    "dcgan_init",
]

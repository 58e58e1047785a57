"""A conformer encoder whose 1/6 subsampling convolutions have fewer channels.

ESPnet's ``conv2d6`` input layer runs two convolutions with ``output_size`` channels each over the
whole feature map (a 3x3 with stride 2, then a 5x5 with stride 3). At the demo's size (d=144,
4 blocks, 83-dim features) those two convolutions take about 80% of the encoder's training step
on a CPU, more than all conformer blocks together: the second one alone costs
``output_size**2 * 25`` multiply-adds per output cell. ``ConformerEncoderNarrowSubsampling``
keeps ESPnet's conformer and its subsampling (the same kernels, strides, output lengths and
masks) and only gives the two convolutions ``subsampling_channels`` channels; the linear layer
after them maps ``subsampling_channels * freq`` to ``output_size`` as before.

Measured with ``benchmarks/bench_encoder_subsampling.py`` (forward + backward + Adam, 16
utterances of 4 s, 2 threads): see the README's benchmark table.
"""
import torch
from espnet.nets.pytorch_backend.transformer.subsampling import Conv2dSubsampling6
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder


class NarrowConv2dSubsampling6(Conv2dSubsampling6):
    """ESPnet's 1/6 convolutional subsampling with ``channels`` channels in its convolutions.

    A subclass, so that ESPnet's conformer treats it as its own ``conv2d6`` layer (it subsamples
    the masks the same way); only ``conv`` and the first layer of ``out`` differ.
    """

    def __init__(self, idim: int, odim: int, channels: int, pos_enc: torch.nn.Module):
        super().__init__(idim, odim, 0.0, pos_enc)
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, channels, 3, 2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 5, 3),
            torch.nn.ReLU(),
        )
        self.out[0] = torch.nn.Linear(channels * (((idim - 1) // 2 - 2) // 3), odim)


class ConformerEncoderNarrowSubsampling(ConformerEncoder):
    """ESPnet's ``ConformerEncoder`` with a ``conv2d6`` input layer of ``subsampling_channels``.

    Every other setting is ``ConformerEncoder``'s (the task checks encoder_conf's keys against both).
    """

    def __init__(self, input_size: int, output_size: int = 256, subsampling_channels: int = 32,
                 input_layer: str = "conv2d6", **conformer_conf):
        if input_layer != "conv2d6":
            raise ValueError(f"encoder_conf.input_layer: this encoder narrows the 'conv2d6' input layer only, "
                             f"not '{input_layer}' (use encoder: conformer for other input layers)")
        if not isinstance(subsampling_channels, int) or subsampling_channels < 1:
            raise ValueError(f"encoder_conf.subsampling_channels must be a positive integer, not {subsampling_channels!r}")
        super().__init__(input_size, output_size=output_size, input_layer="conv2d6", **conformer_conf)
        pos_enc = self.embed.out[1]
        self.embed = NarrowConv2dSubsampling6(input_size, output_size, subsampling_channels, pos_enc)
        self.subsampling_channels = subsampling_channels

"""The conformer with narrow subsampling convolutions (encoder: conformer_narrow_subsampling)."""
import pytest
import torch
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_hdmole.asr.narrow_conformer import ConformerEncoderNarrowSubsampling
from espnet_hdmole.errors import UserError
from espnet_hdmole.tasks.llm_asr import LLMASRTask
from tiny import TRANSCRIPTS, make_feats_set, make_llm_dir, train_args

CONF = dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=2, macaron_style=True,
            rel_pos_type="latest", pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn",
            use_cnn_module=True, cnn_module_kernel=3)


def test_with_as_many_channels_as_espnet_it_computes_espnets_conformer():
    """Same weights, channels = output_size: the outputs and lengths of ESPnet's conv2d6 conformer."""
    torch.manual_seed(0)
    ref = ConformerEncoder(23, input_layer="conv2d6", **CONF).eval()
    narrow = ConformerEncoderNarrowSubsampling(23, subsampling_channels=16, **CONF).eval()
    narrow.load_state_dict(ref.state_dict())
    x, lens = torch.randn(3, 70, 23), torch.tensor([70, 51, 33])
    y_ref, l_ref, _ = ref(x, lens)
    y, l, _ = narrow(x, lens)
    assert torch.equal(l, l_ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)


def test_narrow_channels_keep_lengths_and_masks_and_shrink_the_convolutions():
    torch.manual_seed(0)
    ref = ConformerEncoder(23, input_layer="conv2d6", **CONF).eval()
    narrow = ConformerEncoderNarrowSubsampling(23, subsampling_channels=4, **CONF).eval()
    assert narrow.embed.conv[2].weight.shape == (4, 4, 5, 5)
    assert narrow.embed.out[0].in_features == 4 * ((23 - 1) // 2 - 2) // 3
    x, lens = torch.randn(3, 70, 23), torch.tensor([70, 51, 33])
    y, l, _ = narrow(x, lens)
    assert torch.equal(l, ref(x, lens)[1])
    assert y.shape == (3, int(l.max()), 16)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="conv2d6"):
        ConformerEncoderNarrowSubsampling(23, input_layer="conv2d", **CONF)
    with pytest.raises(ValueError, match="subsampling_channels"):
        ConformerEncoderNarrowSubsampling(23, subsampling_channels=0, **CONF)


def test_the_task_builds_it_and_names_an_unknown_key(tmp_path):
    data = make_feats_set(tmp_path / "d", TRANSCRIPTS, dim=23, frames=60)
    llm = make_llm_dir(tmp_path / "llm", "".join(TRANSCRIPTS) + "转写")
    args = train_args(tmp_path / "e", data, llm, dim=23, accents=False)
    # the later --encoder and --encoder_conf values override tiny.py's transformer settings
    enc = ["--encoder", "conformer_narrow_subsampling", "--encoder_conf", "input_layer=conv2d6",
           "--encoder_conf", "subsampling_channels=8"]
    model = LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(args + enc))
    assert isinstance(model.encoder, ConformerEncoderNarrowSubsampling)
    assert model.encoder.embed.conv[0].out_channels == 8
    with pytest.raises(UserError, match="subsampling_chanels"):
        LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(
            args + enc + ["--encoder_conf", "subsampling_chanels=8"]))

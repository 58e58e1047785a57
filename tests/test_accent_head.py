"""The accent-ID head (HDMoLE's global router): its TDNN form, its input, and its own training step.

The recipe trains the head alone (stage 4 step 3, asr_weight 0) and the HDMoLE systems start
from it (--init_param ...:accent_head:accent_head) with the head frozen.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_llm_asr import work  # noqa: E402,F401 (the tiny LLM and data set, as a fixture)
from tiny import ACCENTS, train_args  # noqa: E402

from espnet_hdmole.asr.accent_head import AccentHead, check_accent_head_conf, head_input, head_input_size, pool_to  # noqa: E402
from espnet_hdmole.errors import UserError  # noqa: E402
from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402

HEAD = "accent_head_conf={'input': 'features', 'layers': 2, 'channels': 16, 'hidden': 16}"
AID_ONLY = ["--model_conf", "asr_weight=0.0", "--model_conf", "aid_weight=1.0", "--model_conf", "use_accent_head=true",
            "--model_conf", HEAD, "--best_model_criterion", "valid,acc_aid,max"]


@pytest.mark.parametrize("layers", [0, 3])
def test_head_output_does_not_depend_on_padding(layers):
    torch.manual_seed(0)
    head = AccentHead(5, 3, hidden=8, layers=layers, channels=8).eval()
    short, long = torch.randn(1, 17, 5), torch.randn(1, 30, 5)
    batch = torch.full((2, 30, 5), 7.0)  # padding that is not zero (e.g. encoder output past the end)
    batch[0, :17], batch[1] = short[0], long[0]
    both = head(batch, torch.tensor([17, 30]))
    torch.testing.assert_close(both[0], head(short, torch.tensor([17]))[0])
    torch.testing.assert_close(both[1], head(long, torch.tensor([30]))[0])


def test_dropout_acts_only_while_the_head_trains():
    """A frozen head (the HDMoLE systems' router) gives the same posteriors in fine-tuning, where
    ESPnet's trainer sets training mode on the whole model, as in decoding."""
    torch.manual_seed(0)
    head = AccentHead(6, 3, hidden=16, layers=2, channels=16, dropout=0.5)
    x, lens = torch.randn(2, 30, 6), torch.tensor([30, 21])
    head.train()
    assert not torch.allclose(head(x, lens), head(x, lens))  # trains: dropout on
    expected = head.eval()(x, lens)
    head.requires_grad_(False)
    torch.testing.assert_close(head.train()(x, lens), expected)


def test_crop_takes_a_random_span_of_each_utterance_only_while_the_head_trains():
    torch.manual_seed(0)
    head = AccentHead(1, 3, hidden=4, layers=0, crop=0.5)
    frames = torch.arange(1, 41, dtype=torch.float)[None, :, None]  # 40 distinct frames
    lens = torch.tensor([40])
    spans = set()
    for _ in range(50):
        out, keep = head._cropped(frames, lens)
        n = int(keep[0])
        assert 20 <= n <= 40
        span = out[0, :n, 0]
        # a contiguous run of the utterance's frames, from its start on; zeros after it
        torch.testing.assert_close(span, torch.arange(span[0], span[0] + n, dtype=torch.float))
        assert float(out[0, n:].abs().sum()) == 0
        spans.add((int(span[0]), n))
    assert len(spans) > 10  # random starts and lengths
    x, both = torch.randn(2, 30, 1), torch.tensor([30, 9])
    head.train()
    assert not torch.allclose(head(x, both), head(x, both))  # trains: cropped
    expected = head.eval()(x, both)
    head.requires_grad_(False)  # frozen (an HDMoLE system's router): never cropped
    torch.testing.assert_close(head.train()(x, both), expected)


def test_pool_to_averages_each_utterance_to_its_own_length():
    x = torch.arange(2 * 8 * 1, dtype=torch.float).reshape(2, 8, 1)
    out = pool_to(x, torch.tensor([7, 8]), torch.tensor([3, 2]), 4)
    assert out.shape == (2, 4, 1)
    # 7 frames -> 3: windows [0, 3), [2, 5), [4, 7) (adaptive pooling); 8 -> 2: halves; zeros after
    torch.testing.assert_close(out[0, :, 0], torch.tensor([1.0, 3.0, 5.0, 0.0]))
    torch.testing.assert_close(out[1, :, 0], torch.tensor([9.5, 13.5, 0.0, 0.0]))


def test_feature_frames_keep_the_contour_within_each_encoder_frame():
    """feature_frames k: each encoder frame gets k averages of the feature slice side by side, in
    time order, so a rise and a fall within one frame differ (k = 1 keeps only their mean)."""
    h, h_lens = torch.zeros(2, 3, 4), torch.tensor([3, 2])
    feats = torch.arange(2 * 12 * 1, dtype=torch.float).reshape(2, 12, 1)  # 12 frames -> 3 (and 8 -> 2)
    x, lens = head_input("encoder", h, h_lens, None, feats, torch.tensor([12, 8]), feature_frames=4)
    assert x.shape == (2, 3, 4 + 4) and lens.tolist() == [3, 2]
    torch.testing.assert_close(x[0, :, 4:], feats[0].reshape(3, 4))  # one feature frame per slot
    torch.testing.assert_close(x[1, :2, 4:], feats[1, :8].reshape(2, 4))
    torch.testing.assert_close(x[1, 2], torch.zeros(8))  # past the end: zeros
    one, _ = head_input("encoder", h, h_lens, None, feats, torch.tensor([12, 8]))
    torch.testing.assert_close(one[..., 4], x[..., 4:].mean(-1))  # k = 1: their mean
    conf = check_accent_head_conf({"input": "encoder", "feature_dims": [80, 83], "feature_frames": 6})
    assert head_input_size(conf, 256, 83) == 256 + 18


def test_tdnn_head_sees_order_which_a_mean_cannot():
    """A rising and a falling contour have the same time-mean; the TDNN's statistics differ."""
    ramp = torch.linspace(-1, 1, 40)[None, :, None]
    lens = torch.tensor([40])
    torch.manual_seed(0)
    mean_head, tdnn = AccentHead(1, 2, hidden=4, layers=0), AccentHead(1, 2, hidden=4, layers=2, channels=4)
    torch.testing.assert_close(mean_head(ramp, lens), mean_head(ramp.flip(1), lens))
    assert not torch.allclose(tdnn(ramp, lens), tdnn(ramp.flip(1), lens))


@pytest.mark.parametrize("conf, key", [({"input": "pitch"}, "accent_head_conf.input must be one of"),
                                       ({"layer": 2}, "unknown keys"),
                                       ({"input": "features", "feature_dims": [3, 1]}, "accent_head_conf.feature_dims"),
                                       ({"dropout": 1.0}, "accent_head_conf.dropout"),
                                       ({"layers": -1}, "accent_head_conf.layers"),
                                       ({"feature_frames": 0}, "accent_head_conf.feature_frames"),
                                       ({"crop": 0}, "accent_head_conf.crop must be in"),
                                       ({"crop": 1.5}, "accent_head_conf.crop must be in")])
def test_bad_head_settings_name_the_key(conf, key):
    with pytest.raises(UserError, match=key):
        check_accent_head_conf(conf)


def test_accent_only_training_runs_neither_encoder_nor_llm(work, tmp_path, monkeypatch):
    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "exp", data, llm, extra=AID_ONLY))
    model = LLMASRTask.build_model(args)

    def must_not_run(*a, **k):
        raise AssertionError("ran although only the accent head trains")

    monkeypatch.setattr(model.encoder, "forward", must_not_run)
    monkeypatch.setattr(model.llm.base_model, "forward", must_not_run)
    x = torch.randn(2, 40, 20)
    loss, stats, _ = model(x, torch.tensor([40, 33]), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, dtype=torch.long),
                           accent=torch.tensor([[0], [1]]))
    torch.testing.assert_close(loss.detach().reshape(()), stats["loss_aid"].reshape(()))
    loss.sum().backward()
    assert all(p.grad is not None for p in model.accent_head.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())


def test_head_reads_only_its_feature_slice(work, tmp_path):
    w, llm, data = work
    extra = AID_ONLY[:-2] + ["--model_conf", HEAD[:-1] + ", 'feature_dims': [2, 5]}"]
    model = LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(train_args(tmp_path / "e", data, llm, extra=extra)))
    assert model.accent_head.convs[0].in_channels == 3
    x, lens = torch.randn(1, 30, 20), torch.tensor([30])
    y = x.clone()
    y[..., :2] += 5.0
    y[..., 5:] -= 3.0
    torch.testing.assert_close(model.accent_logits(x, lens, None, None), model.accent_logits(y, lens, None, None))


def test_ctc_head_reads_the_ctc_posteriors_of_the_encoder_output(work, tmp_path):
    """input: ctc -> the head reads the softmax of the CTC head over h."""
    w, llm, data = work
    extra = AID_ONLY[:-2] + ["--model_conf", HEAD.replace("'features'", "'ctc'"), "--model_conf", "ctc_weight=0.5"]
    model = LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(train_args(tmp_path / "e", data, llm, extra=extra)))
    assert model.accent_head.convs[0].in_channels == model.ctc.ctc_lo.out_features
    h, lens = torch.randn(2, 25, model.encoder.output_size()), torch.tensor([25, 19])
    expected = model.accent_head(torch.softmax(model.ctc.ctc_lo(h), -1), lens)
    torch.testing.assert_close(model.accent_logits(None, None, h, lens), expected)


def test_ctc_head_with_pitch_reads_the_feature_slice_pooled_to_the_encoder_frames(work, tmp_path):
    w, llm, data = work
    head = HEAD.replace("'features'", "'ctc'")[:-1] + ", 'feature_dims': [17, 20]}"
    extra = AID_ONLY[:-2] + ["--model_conf", head, "--model_conf", "ctc_weight=0.5"]
    model = LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(train_args(tmp_path / "e", data, llm, extra=extra)))
    assert model.accent_head.convs[0].in_channels == model.ctc.ctc_lo.out_features + 3
    x, lens = torch.randn(2, 60, 20), torch.tensor([60, 42])
    h, h_lens = torch.randn(2, 10, model.encoder.output_size()), torch.tensor([10, 7])
    feats = model.normalize(x, lens)[0] if model.normalize is not None else x
    pitch = torch.zeros(2, 10, 3)
    pitch[0] = feats[0, :, 17:20].reshape(10, 6, 3).mean(1)  # 60 frames -> 10: means of 6
    pitch[1, :7] = feats[1, :42, 17:20].reshape(7, 6, 3).mean(1)
    expected = model.accent_head(torch.cat([torch.softmax(model.ctc.ctc_lo(h), -1), pitch], -1), h_lens)
    torch.testing.assert_close(model.accent_logits(x, lens, h, h_lens), expected)
    y = x.clone()
    y[..., :17] += 4.0  # outside the slice: no effect
    torch.testing.assert_close(model.accent_logits(y, lens, h, h_lens), expected)


def test_encoding_and_the_head_leave_the_callers_features_alone(work, tmp_path):
    """GlobalMVN normalises in place: without a copy, the head's feature slice was normalised twice
    after the encoder had run on the same batch (decoding, model_info), and its accuracy fell."""
    w, llm, data = work
    head = HEAD.replace("'features'", "'ctc'")[:-1] + ", 'feature_dims': [17, 20]}"
    extra = AID_ONLY[:-2] + ["--model_conf", head, "--model_conf", "ctc_weight=0.5"]
    stats = tmp_path / "cmvn.npz"  # mean 1, std 2 per dimension: normalising twice is visible
    np.savez(stats, count=np.array(100.0), sum=np.full(20, 100.0), sum_square=np.full(20, 500.0))
    extra += ["--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats}"]
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "e", data, llm, extra=extra))
    model = LLMASRTask.build_model(args).eval()
    x, lens = torch.randn(2, 60, 20), torch.tensor([60, 42])
    kept = x.clone()
    first = model.predict_accent(x, lens)
    torch.testing.assert_close(x, kept)
    torch.testing.assert_close(model.predict_accent(x, lens), first)


def test_ctc_head_without_a_ctc_head_is_refused(work, tmp_path):
    w, llm, data = work
    extra = AID_ONLY[:-2] + ["--model_conf", HEAD.replace("'features'", "'ctc'")]
    with pytest.raises(UserError, match="input: ctc needs the model's CTC head"):
        LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(train_args(tmp_path / "e", data, llm, extra=extra)))


def test_trained_head_is_loaded_and_stays_frozen_in_an_hdmole_system(work, tmp_path):
    """Step 3 trains the head alone; an HDMoLE system starts from it and does not change it;
    its adapter-only checkpoint reloads with the head from --init_param."""
    w, llm, data = work
    aid = tmp_path / "aid"
    LLMASRTask.main(cmd=train_args(aid, data, llm, epochs=3, iters=10, lr=1e-2, extra=AID_ONLY))
    head = {k: v for k, v in torch.load(aid / "valid.acc_aid.best.pth").items() if k.startswith("accent_head.")}
    assert head
    sysdir = tmp_path / "hdmole"
    conf = ("{'target_modules': ['q_proj'], 'num_domains': %d, 'experts_per_domain': 1, 'rank': 2, 'alpha': 4, "
            "'global_router': 'predicted'}" % len(ACCENTS))
    LLMASRTask.main(cmd=train_args(sysdir, data, llm, epochs=1, iters=3, extra=[
        "--model_conf", "use_accent_head=true", "--model_conf", HEAD, "--model_conf", "aid_weight=0.0",
        "--use_adapter", "true", "--adapter", "hdmole", "--adapter_conf", conf,
        "--save_strategy", "required_grad_only", "--freeze_param", "encoder", "projector",
        "--init_param", f"{aid / 'valid.acc_aid.best.pth'}:::accent_head",  # the base, without the head
        f"{aid / 'valid.acc_aid.best.pth'}:accent_head:accent_head"]))
    saved = torch.load(sysdir / "valid.acc.best.pth")
    assert not any(k.startswith("accent_head.") for k in saved), "the frozen head is not part of the adapter checkpoint"
    model, _ = LLMASRTask.build_model_from_file(sysdir / "config.yaml", sysdir / "valid.acc.best.pth")
    for k, v in head.items():
        torch.testing.assert_close(model.state_dict()[k], v)
    # a frozen head's logits are kept per utterance id (computed once, then read), not while it trains
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    model.cache_encoder_outputs = True
    speech, lens = torch.randn(2, 40, 20), torch.tensor([40, 31])
    h, h_lens = model.encode(speech, lens)
    calls, real = [], model.accent_logits
    model.accent_logits = lambda *a: calls.append(1) or real(*a)
    keys = model.cache_keys(speech, lens, ["u1", "u2"])
    first = model.cached_accent_logits(speech, lens, h, h_lens, keys)
    again = model.cached_accent_logits(speech, lens, h, h_lens, keys)
    assert len(calls) == 1 and torch.equal(first, again) and torch.equal(first, real(speech, lens, h, h_lens))
    other, other_lens = speech.flip(0), lens.flip(0)  # the same ids, each with the other's input
    h2, h2_lens = model.encode(other, other_lens)
    other_keys = model.cache_keys(other, other_lens, ["u1", "u2"])
    swapped = model.cached_accent_logits(other, other_lens, h2, h2_lens, other_keys)  # computed again
    assert len(calls) == 2 and torch.equal(swapped, real(other, other_lens, h2, h2_lens))
    model.accent_head.output.weight.requires_grad_(True)  # a head that trains is run every time
    model.cached_accent_logits(other, other_lens, h2, h2_lens, other_keys)
    assert len(calls) == 3

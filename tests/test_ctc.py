"""The model's CTC head: the auxiliary loss, pinyin units, CTC-only encoder training and CTC
compression, through ESPnet's task and trainer (moved out of test_llm_asr.py)."""
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import train_args  # noqa: E402

from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402
from llm_asr_common import read_kaldi, task_batch, work  # noqa: E402,F401  (work: the shared fixture)


def test_ctc_auxiliary_loss(work):
    """ctc_weight adds a CTC loss on the encoder output; the encoder gets its gradient."""
    from espnet_hdmole.asr.preprocessor import LLMASRPreprocessor

    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(w / "unused", data, llm,
                                                         extra=["--model_conf", "ctc_weight=0.3"]))
    model = LLMASRTask.build_model(args)
    assert model.ctc.ctc_lo.out_features == len(model.tokenizer) + 1
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    text = read_kaldi(data / "text")
    pre = LLMASRPreprocessor(False, llm)
    items = [(u, pre(u, {"speech": np.asarray(feats[u]), "text": text[u]})) for u in sorted(feats)]
    _, batch = LLMASRTask.build_collate_fn(None, True)(items)
    loss, stats, _ = model(**batch)
    assert torch.isfinite(stats["loss_ctc"]) and stats["loss_ctc"] > 0
    torch.testing.assert_close(loss.detach(), stats["loss_asr"] + 0.3 * stats["loss_ctc"])
    loss.backward()
    assert model.ctc.ctc_lo.weight.grad.abs().sum() > 0


def test_pinyin_units():
    """Initials and finals of the canonical reading; characters without one give nothing."""
    from espnet_hdmole.asr.pinyin_units import PinyinUnits

    pu = PinyinUnits()
    assert pu.tokens("你好") == ["I_n", "F_i", "I_h", "F_ao"]
    assert pu.tokens("北京2010年") == ["I_b", "F_ei", "I_j", "F_ing", "I_n", "F_ian"]
    ids = pu.encode("我们学习语音识别")
    assert 0 not in ids and len(ids) == len(pu.tokens("我们学习语音识别")) == 16
    assert len(set(pu.units)) == len(pu) and pu.units[0] == "<blank>"
    tone = PinyinUnits(tones=True)  # the tone goes on the final; 5 is the neutral tone
    assert tone.tokens("你好吗") == ["I_n", "F_i3", "I_h", "F_ao3", "I_m", "F_a5"]
    assert tone.units[: len(PinyinUnits.initials()) + 1] == pu.units[: len(PinyinUnits.initials()) + 1]
    assert len(tone) == 1 + len(PinyinUnits.initials()) + 5 * (len(pu) - 1 - len(PinyinUnits.initials()))
    assert 0 not in tone.encode("我们学习语音识别") and len(tone.encode("我们学习语音识别")) == 16


def test_pinyin_ctc_trains_through_the_trainer(work, tmp_path):
    """ctc_units: pinyin: the preprocessor adds 'text_ctc', the CTC head has one output per unit,
    the loss is loss_asr + w * loss_ctc over those targets, and ESPnet's trainer runs it."""
    from espnet_hdmole.asr.pinyin_units import PinyinUnits
    from espnet_hdmole.asr.preprocessor import LLMASRPreprocessor

    w, llm, data = work
    extra = ["--model_conf", "ctc_weight=0.5", "--model_conf", "ctc_units=pinyin"]
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "exp", data, llm, extra=extra))
    model = LLMASRTask.build_model(args)
    assert model.ctc.ctc_lo.out_features == len(PinyinUnits())
    pre = LLMASRTask.build_preprocess_fn(args, train=True)
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    text = read_kaldi(data / "text")
    items = [(u, pre(u, {"speech": np.asarray(feats[u]), "text": text[u]})) for u in sorted(feats)]
    assert items[0][1]["text_ctc"].tolist() == PinyinUnits().encode(text[items[0][0]])
    _, batch = LLMASRTask.build_collate_fn(None, True)(items)
    loss, stats, _ = model(**batch)
    torch.testing.assert_close(loss.detach(), stats["loss_asr"] + 0.5 * stats["loss_ctc"])
    # the same loss computed by hand from ESPnet's CTC over the units, not over the LLM's ids
    h, h_lens = model.encode(batch["speech"], batch["speech_lengths"])
    ref = model.ctc(h, h_lens, batch["text_ctc"], batch["text_ctc_lengths"])
    torch.testing.assert_close(stats["loss_ctc"].reshape(()), ref.detach().reshape(()))
    plain = LLMASRPreprocessor(False, llm)  # without the units the model says what is missing
    items = [(u, plain(u, {"speech": np.asarray(feats[u]), "text": text[u]})) for u in sorted(feats)]
    _, batch = LLMASRTask.build_collate_fn(None, True)(items)
    with pytest.raises(ValueError, match="text_ctc"):
        model(**batch)
    LLMASRTask.main(args=LLMASRTask.get_parser().parse_args(
        train_args(tmp_path / "exp", data, llm, extra=extra, epochs=1, iters=3)))
    reporter = torch.load(tmp_path / "exp" / "checkpoint.pth", weights_only=False)["reporter"]
    train_stats = reporter["stats"][1]["train"]
    assert np.isfinite(train_stats["loss_ctc"]) and train_stats["loss_ctc"] > 0


def test_ctc_only_encoder_training_skips_the_llm(work, tmp_path, monkeypatch):
    """asr_weight: 0 with ctc_weight > 0 trains the encoder alone: the LLM never runs and the
    loss is the CTC loss; asr_weight 0 without CTC is refused."""
    w, llm, data = work
    extra = ["--model_conf", "asr_weight=0.0", "--model_conf", "ctc_weight=1.0", "--model_conf", "ctc_units=pinyin"]
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "exp", data, llm, extra=extra))
    model = LLMASRTask.build_model(args)
    _, batch = task_batch(args, data)

    def no_llm(*a, **k):
        raise AssertionError("the LLM ran")

    monkeypatch.setattr(model.llm.base_model, "forward", no_llm)
    loss, stats, _ = model(**batch)
    assert "loss_asr" not in stats and "acc" not in stats
    torch.testing.assert_close(loss.detach().reshape(()), stats["loss_ctc"].reshape(()))
    loss.sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.projector.parameters())
    bad = train_args(tmp_path / "bad", data, llm, extra=["--model_conf", "asr_weight=0.0"])
    with pytest.raises(ValueError, match="asr_weight"):
        LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(bad))


@pytest.mark.parametrize("mode", ["unit", "syllable"])
def test_ctc_compression_averages_ctc_segments(work, tmp_path, monkeypatch, mode):
    """ctc_compress: each run of one non-blank label of the CTC greedy path becomes the mean of its
    frames (blanks dropped); 'syllable' pairs an initial with the final after it; the frozen CTC head
    comes with the model, and training and decoding both see the compressed sequence."""
    from espnet_hdmole.asr.pinyin_units import PinyinUnits

    w, llm, data = work
    extra = ["--model_conf", "ctc_units=pinyin", "--model_conf", f"ctc_compress={mode}"]
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "exp", data, llm, extra=extra))
    model = LLMASRTask.build_model(args)
    d = model.encoder.output_size()
    assert model.ctc is not None and not any(p.requires_grad for p in model.ctc.parameters())
    k = model.projector.stack
    assert model.projector.linear1.in_features == d * k * (2 if mode == "syllable" else 1)
    ini, fin = 3, len(PinyinUnits.initials()) + 5  # an initial and a final id
    labels = torch.tensor([[0, ini, ini, 0, ini, fin, fin, 0, fin + 1, 0], [0] * 10])
    monkeypatch.setattr(model.ctc, "argmax", lambda h: labels[: h.shape[0], : h.shape[1]])
    h = torch.randn(2, 10, d)
    out, lens = model.compress(h, torch.tensor([10, 5]))
    x, z = h[0], torch.zeros(d)
    if mode == "unit":
        want = [x[1:3].mean(0), x[4], x[5:7].mean(0), x[8]]
        fallback = h[1, :5].mean(0)
    else:  # the first initial has no final, the second pairs with a final, the last final has no initial
        want = [torch.cat([x[1:3].mean(0), z]), torch.cat([x[4], x[5:7].mean(0)]), torch.cat([z, x[8]])]
        fallback = torch.cat([z, h[1, :5].mean(0)])
    assert lens.tolist() == [len(want), 1]
    torch.testing.assert_close(out[0, : len(want)], torch.stack(want))
    torch.testing.assert_close(out[1, 0], fallback)
    monkeypatch.undo()
    # the LLM's input is the projected compressed sequence, in training and in decoding
    seen = []
    model.projector.register_forward_hook(lambda m, i, o: seen.append(o[1].tolist()))
    ids, batch = task_batch(args, data, train=False, n=2)
    loss, stats, _ = model(**batch)
    assert torch.isfinite(loss) and "loss_ctc" not in stats
    h, h_lens = model.encode(batch["speech"], batch["speech_lengths"])
    expected = ((model.compress(h, h_lens)[1] + k - 1) // k).tolist()
    assert seen == [expected] and max(expected) < int(h_lens.max())
    # with the encoder frozen and cached, the compressed sequence is cached too: same loss
    model.cache_encoder_outputs = True
    model.encoder.requires_grad_(False)
    model.eval()
    first, _, _ = model(**batch, utt_id=ids)
    assert sorted(model._cmp_cache) == sorted(ids)
    monkeypatch.setattr(model, "compress", lambda *a: pytest.fail("compressed again"))
    second, _, _ = model(**batch, utt_id=ids)
    torch.testing.assert_close(first, second)
    monkeypatch.undo()
    seen.clear()
    model.recognize(batch["speech"], batch["speech_lengths"], max_new_tokens=2)
    assert seen == [expected]
    bad = train_args(tmp_path / "bad", data, llm, extra=["--model_conf", "ctc_compress=syllable"])
    with pytest.raises(ValueError, match="ctc_units: pinyin"):
        LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(bad))

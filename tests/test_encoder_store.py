"""The frozen encoder's outputs written once (dump_encoder_outputs) and read by training and
decoding instead of the encoder: same results, the encoder skipped, other encoders' outputs refused."""
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import ACCENTS, TRANSCRIPTS, make_feats_set, make_llm_dir, train_args  # noqa: E402

from espnet_hdmole.bin.dump_encoder_outputs import main as dump_main  # noqa: E402
from espnet_hdmole.bin.llm_asr_inference import main as infer_main  # noqa: E402
from espnet_hdmole.errors import UserError  # noqa: E402
from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained briefly, and its encoder outputs dumped for its data set."""
    w = tmp_path_factory.mktemp("encstore")
    llm = make_llm_dir(w / "llm", "".join(TRANSCRIPTS) + "转写")
    data = make_feats_set(w / "data", TRANSCRIPTS, ACCENTS * 2)
    exp = w / "exp"
    LLMASRTask.main(cmd=train_args(exp, data, llm, epochs=2, iters=5, extra=["--model_conf", "aid_weight=1.0"]))
    dump_main(["--model_config", str(exp / "config.yaml"), "--model_file", str(exp / "valid.acc.ave.pth"),
               "--feats_scp", str(data / "feats.scp"), "--output_dir", str(w / "enc")])
    return w, llm, data, exp


def load(exp):
    model, args = LLMASRTask.build_model_from_file(exp / "config.yaml", exp / "valid.acc.ave.pth")
    return model, args


def batch_with_outputs(args, data, enc_dir, train):
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    stored = dict(kaldiio.load_scp(str(enc_dir / "encoder_out.scp")))
    text = dict(line.rstrip("\n").split(" ", 1) for line in open(data / "text", encoding="utf-8"))
    acc = dict(line.split() for line in open(data / "utt2accent", encoding="utf-8"))
    pre = LLMASRTask.build_preprocess_fn(args, train=train)
    items = [(u, pre(u, {"speech": np.asarray(feats[u]), "text": text[u], "accent": acc[u],
                         "encoder_out": np.asarray(stored[u])})) for u in sorted(feats)]
    return LLMASRTask.build_collate_fn(args, train)(items)


def test_dump_writes_every_utterance_as_the_encoder_computes_it_alone(trained):
    w, llm, data, exp = trained
    model, _ = load(exp)
    stored = dict(kaldiio.load_scp(str(w / "enc" / "encoder_out.scp")))
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    assert sorted(stored) == sorted(feats)
    shapes = dict(line.split() for line in open(w / "enc" / "encoder_out_shape", encoding="utf-8"))
    for u, x in feats.items():
        h, h_lens = model.encode_frozen(torch.tensor(x)[None], torch.tensor([len(x)]))
        np.testing.assert_allclose(stored[u], h[0, : h_lens[0]].numpy(), rtol=1e-5, atol=1e-6)
        assert shapes[u] == f"{stored[u].shape[0]},{stored[u].shape[1]}"
    assert not list((w / "enc").glob(".*.tmp"))


def test_training_reads_stored_outputs_same_loss_encoder_run_only_for_the_check(trained):
    w, llm, data, exp = trained
    model, args = load(exp)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.train()
    ids, batch = batch_with_outputs(args, data, w / "enc", train=True)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    plain = {k: v for k, v in batch.items() if not k.startswith("encoder_out")}
    loss_plain, stats_plain, _ = model(**plain)
    assert len(calls) == 1
    loss1, stats1, _ = model(**batch, utt_id=ids)
    assert len(calls) == 2  # the check on the first utterance
    loss2, _, _ = model(**batch, utt_id=ids)
    assert len(calls) == 2  # checked once per mode: the encoder is skipped now
    torch.testing.assert_close(loss1, loss_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss1, loss2)
    torch.testing.assert_close(stats1["acc_aid"], stats_plain["acc_aid"])


def test_a_trainable_encoder_ignores_stored_outputs_in_training_and_validation(trained):
    w, llm, data, exp = trained
    model, args = load(exp)
    model.train()
    ids, batch = batch_with_outputs(args, data, w / "enc", train=True)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    model(**batch, utt_id=ids)
    model(**batch, utt_id=ids)
    assert len(calls) == 2
    # validation of that run: the trained encoder no longer matches the stored outputs, which
    # stay ignored (no refusal, the encoder runs)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model(**batch, utt_id=ids)
    assert len(calls) == 3


def test_outputs_of_another_encoder_are_refused(trained):
    w, llm, data, exp = trained
    model, args = load(exp)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    ids, batch = batch_with_outputs(args, data, w / "enc", train=False)
    with pytest.raises(UserError, match="encoder_out.*differ from this model's encoder"):
        model(**batch, utt_id=ids)
    with pytest.raises(UserError, match="encoder_out.*differ from this model's encoder"):
        model.recognize(batch["speech"], batch["speech_lengths"], encoder_out=batch["encoder_out"],
                        encoder_out_lengths=batch["encoder_out_lengths"])
    # a different length (e.g. another subsampling) is refused with the shapes
    short = batch["encoder_out"][:, :-1]
    with pytest.raises(UserError, match="shape"):
        model.recognize(batch["speech"], batch["speech_lengths"], encoder_out=short,
                        encoder_out_lengths=batch["encoder_out_lengths"] - 1)


def test_decoding_with_stored_outputs_gives_the_same_hypotheses(trained, capsys):
    w, llm, data, exp = trained
    common = ["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "valid.acc.ave.pth"),
              "--data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark"]
    infer_main(common + ["--output_dir", str(w / "dec_plain")])
    infer_main(common + ["--output_dir", str(w / "dec_stored"), "--data_path_and_name_and_type",
                         f"{w / 'enc'}/encoder_out.scp,encoder_out,kaldi_ark"])
    for f in ("text", "accent"):
        assert (w / "dec_plain/1best_recog" / f).read_text() == (w / "dec_stored/1best_recog" / f).read_text()
    assert "encoder_timed 1" in (w / "dec_plain/rtf").read_text()
    assert "encoder_timed 0" in (w / "dec_stored/rtf").read_text()


def test_dump_cli_checks_its_arguments(trained, capsys):
    from espnet_hdmole.errors import run_cli

    w, llm, data, exp = trained
    base = ["--model_config", str(exp / "config.yaml"), "--model_file", str(exp / "valid.acc.ave.pth")]
    assert run_cli(dump_main, base + ["--feats_scp", str(w / "nowhere.scp"), "--output_dir", str(w / "x")]) == 1
    assert "nowhere.scp' does not exist" in capsys.readouterr().err
    assert run_cli(dump_main, base + ["--feats_scp", str(data / "feats.scp"), "--feats_scp", str(data / "feats.scp"),
                                      "--output_dir", str(w / "x")]) == 1
    assert "2 --feats_scp but 1 --output_dir" in capsys.readouterr().err

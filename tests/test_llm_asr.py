"""The LLM-based ASR model through ESPnet's task and trainer: overfit, adapt, reload, decode."""
import logging
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import ACCENTS, TRANSCRIPTS, make_feats_set, train_args, write_kaldi  # noqa: E402

from espnet_hdmole.asr.param_report import trainable_parameter_report  # noqa: E402
from espnet_hdmole.bin.llm_asr_inference import main as infer_main  # noqa: E402
from espnet_hdmole.tasks.llm_asr import LLMASRTask  # noqa: E402
from llm_asr_common import read_kaldi, task_batch, work  # noqa: E402,F401  (work: the shared fixture)


@pytest.fixture(scope="module")
def pretrained(work):
    """The full model (encoder, projector, LLM, accent head) trained to overfit six utterances."""
    w, llm, data = work
    out = w / "exp_full"
    LLMASRTask.main(cmd=train_args(out, data, llm, epochs=4, iters=25, extra=["--model_conf", "aid_weight=1.0"]))
    return out


def decode(exp, data, out, beam=1, model="valid.acc.ave.pth", extra=()):
    infer_main(["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / model),
                "--output_dir", str(out), "--beam_size", str(beam),
                "--data_path_and_name_and_type", f"{data}/feats.scp,speech,kaldi_ark", *extra])
    return read_kaldi(out / "1best_recog" / "text")


def test_full_model_overfits_and_decodes_transcripts(work, pretrained):
    w, llm, data = work
    ref = read_kaldi(data / "text")
    assert decode(pretrained, data, w / "dec_greedy") == ref
    assert decode(pretrained, data, w / "dec_beam", beam=3) == ref
    rtf = read_kaldi(w / "dec_beam" / "rtf")
    assert float(rtf["rtf"]) > 0 and int(rtf["utterances"]) == 6
    # the accent head learned the (separable) labels
    assert read_kaldi(w / "dec_greedy" / "1best_recog" / "accent") == read_kaldi(data / "utt2accent")
    stats = torch.load(pretrained / "checkpoint.pth", weights_only=False)["reporter"]["stats"]
    assert stats[4]["valid"]["acc"] == 1.0 and stats[4]["valid"]["acc_aid"] == 1.0
    assert stats[4]["valid"]["loss_asr"] < 0.5 * stats[1]["train"]["loss_asr"]


def valid_stats(model, data, accents=True):
    """The model's loss on the whole set as one batch, as the trainer's validation computes it."""
    from espnet_hdmole.asr.preprocessor import LLMASRPreprocessor

    mc = model.accent_list
    pre = LLMASRPreprocessor(False, str(Path(data).parent / "llm"), accent_list=mc)
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    text, acc = read_kaldi(data / "text"), read_kaldi(data / "utt2accent")
    items = []
    for uid in sorted(feats):
        d = {"speech": np.asarray(feats[uid]), "text": text[uid]}
        if accents:
            d["accent"] = acc[uid]
        items.append((uid, pre(uid, d)))
    _, batch = LLMASRTask.build_collate_fn(None, False)(items)
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(**batch)
    return stats


SYSTEMS = {
    "full_ft": ["--freeze_param", "encoder", "accent_head", "--model_conf", "use_accent_head=true"],
    "lora": ["--freeze_param", "encoder", "projector", "llm", "accent_head", "--model_conf", "use_accent_head=true",
             "--use_adapter", "true", "--adapter", "lora",
             "--adapter_conf", "target_modules=['linear1', 'linear2', 'q_proj', 'v_proj']",
             "--adapter_conf", "rank=4", "--adapter_conf", "alpha=8", "--save_strategy", "adapter_only"],
    "hdmole": ["--use_adapter", "true", "--adapter", "hdmole", "--save_strategy", "required_grad_only",
               "--adapter_conf", "target_modules=['linear1', 'linear2', 'q_proj', 'v_proj']",
               "--adapter_conf", "num_domains=3", "--adapter_conf", "experts_per_domain=2",
               "--adapter_conf", "rank=4", "--adapter_conf", "keep_trainable=['accent_head']",
               "--model_conf", "aid_weight=0.5"],
    "hdmole_oracle": ["--use_adapter", "true", "--adapter", "hdmole", "--save_strategy", "required_grad_only",
                      "--adapter_conf", "target_modules=['linear2', 'q_proj']",
                      "--adapter_conf", "num_domains=3", "--adapter_conf", "global_router=oracle",
                      "--adapter_conf", "activation=topk", "--adapter_conf", "top_k=1",
                      "--model_conf", "aid_weight=0.5", "--model_conf", "use_accent_head=true"],
}


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_system_trains_saves_reloads_identically_and_decodes(work, pretrained, system):
    w, llm, data = work
    out = w / f"exp_{system}"
    extra = ["--init_param", str(pretrained / "valid.acc.ave.pth")] + SYSTEMS[system]
    LLMASRTask.main(cmd=train_args(out, data, llm, epochs=1, iters=6, lr=1e-2, extra=extra))
    reported = torch.load(out / "checkpoint.pth", weights_only=False)["reporter"]["stats"][1]["valid"]

    saved = torch.load(out / "valid.acc.ave.pth", weights_only=False)
    n_saved = sum(v.numel() for v in saved.values())
    model, _ = LLMASRTask.build_model_from_file(out / "config.yaml", out / "valid.acc.ave.pth")
    if system != "full_ft":  # adapter-only checkpoints: far smaller than the model
        assert n_saved < 0.5 * sum(p.numel() for p in model.parameters())
    got = valid_stats(model, data)
    assert got["loss_asr"].item() == pytest.approx(reported["loss_asr"], rel=1e-5, abs=1e-6)
    # and the adaptation did something: the pre-trained model's loss differs
    base, _ = LLMASRTask.build_model_from_file(pretrained / "config.yaml", pretrained / "valid.acc.ave.pth")
    assert abs(valid_stats(base, data)["loss_asr"].item() - reported["loss_asr"]) > 1e-4

    extra_dec = ["--data_path_and_name_and_type", f"{data}/utt2accent,accent,text"] if "oracle" in system else []
    hyp = decode(out, data, w / f"dec_{system}", extra=extra_dec)
    assert sorted(hyp) == sorted(read_kaldi(data / "text"))


def test_oracle_system_needs_labels_at_decoding(work, pretrained):
    w, llm, data = work
    out = w / "exp_hdmole_oracle"
    if not (out / "valid.acc.ave.pth").exists():
        pytest.skip("needs the hdmole_oracle system")
    with pytest.raises(ValueError, match="oracle needs accent labels"):
        decode(out, data, w / "dec_oracle_nolabel")


def test_trainable_parameter_report_matches_a_count(work):
    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(w / "unused", data, llm, extra=SYSTEMS["hdmole"]))
    from espnet2.layers.create_adapter import create_adapter

    model = LLMASRTask.build_model(args)
    proj_base = sum(p.numel() for p in model.projector.parameters())
    q_v = [m for n, m in model.llm.named_modules() if n.endswith(("q_proj", "v_proj"))]
    head = sum(p.numel() for p in model.accent_head.parameters())
    llm_base = sum(p.numel() for p in model.llm.parameters())
    create_adapter(model, "hdmole", args.adapter_conf)
    rep = trainable_parameter_report(model)

    def expert_count(d_in, d_out, n=6, r=4):  # A, B, router weight + bias, threshold
        return n * r * (d_in + d_out) + d_in * n + n + 1

    p1, p2 = model.projector.linear1, model.projector.linear2
    want = expert_count(p1.in_features, p1.out_features) + expert_count(p2.in_features, p2.out_features)
    want += sum(expert_count(m.in_features, m.out_features) for m in q_v) + head
    assert rep["trainable"] == want
    assert rep["reference"] == proj_base + llm_base + head
    assert rep["share"] == pytest.approx(100 * want / (proj_base + llm_base + head))
    assert sorted(rep["touched"]) == ["accent_head", "llm", "projector"]


# ---------------------------------------------------------------------- bad input
def run_main(w, data, llm, extra=(), **kw):
    LLMASRTask.main(cmd=train_args(w / "exp_bad", data, llm, epochs=1, iters=1, extra=list(extra), **kw))


def test_missing_or_incomplete_llm_dir(work, tmp_path):
    w, llm, data = work
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_main(w, data, str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((Path(llm) / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        run_main(w, data, str(tmp_path / "half"))


def test_bad_data_files(work, tmp_path):
    w, llm, data = work
    bad = make_feats_set(tmp_path / "d1", ["你好世界", "早上好", "好"], ["Mandarin", "Klingon", "Beijing"])
    with pytest.raises(ValueError, match=r"utt2accent:2: utterance 'utt001' has accent label 'Klingon'"):
        run_main(w, bad, llm)
    bad = make_feats_set(tmp_path / "d2", ["你好世界", "早上好火星", "好"], ACCENTS)
    with pytest.raises(ValueError, match=r"cannot encode '星火' \(first in utterance 'utt001'\)"):
        run_main(w, bad, llm)
    bad = make_feats_set(tmp_path / "d3", ["你好世界", "早上好", "好"], ACCENTS)
    write_kaldi(bad / "text", {"utt000": "你好", "utt001": "", "utt002": "好"})
    with pytest.raises(ValueError, match=r"text:2: utterance 'utt001' has an empty transcript"):
        run_main(w, bad, llm)
    (bad / "text").write_text("utt001 早上好\nutt000 你好\nutt002 好\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"text:2: utterance id 'utt000' comes after 'utt001'"):
        run_main(w, bad, llm)
    write_kaldi(bad / "text", {"utt000": "你好", "utt001": "早上好", "utt009": "好"})
    with pytest.raises(ValueError, match=r"disagree.*utt009"):
        run_main(w, bad, llm)


def test_unknown_yaml_keys(work, tmp_path):
    w, llm, data = work
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['promt'\] in model_conf"):
        run_main(w, data, llm, extra=["--model_conf", "promt=x"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_block'\] in encoder_conf"):
        run_main(w, data, llm, extra=["--encoder_conf", "num_block=2"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) in adapter_conf.*'rnk'"):
        run_main(w, data, llm, extra=["--use_adapter", "true", "--adapter", "hdmole",
                                      "--adapter_conf", "target_modules=['q_proj']", "--adapter_conf", "rnk=4"])
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_epochs: 3\n")
    with pytest.raises(SystemExit):
        run_main(w, data, llm, extra=["--config", str(cfg)])


def test_whisper_encoder_system_trains_and_decodes(work, tmp_path):
    """A frozen (tiny) Whisper encoder from a local directory, on raw 16 kHz audio shorter than
    its 30-s window (here 2 s), under the projector and the LLM."""
    import soundfile
    from test_whisper_encoder import tiny_config
    from transformers import WhisperModel

    w, llm, _ = work
    torch.manual_seed(0)
    wdir = tmp_path / "whisper"
    WhisperModel(tiny_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)).save_pretrained(str(wdir))
    d = tmp_path / "wavdata"
    d.mkdir()
    rng = np.random.RandomState(0)
    scp, text, shape = {}, {}, {}
    for i, t in enumerate(TRANSCRIPTS):
        uid = f"utt{i:03d}"
        n = 8000 + 1600 * i
        soundfile.write(d / f"{uid}.wav", (0.3 * rng.randn(n)).astype(np.float32), 16000, subtype="PCM_16")
        scp[uid], text[uid], shape[uid] = str(d / f"{uid}.wav"), t, str(n)
    write_kaldi(d / "wav.scp", scp)
    write_kaldi(d / "text", text)
    write_kaldi(d / "speech_shape", shape)
    args = train_args(tmp_path / "exp", d, llm, epochs=4, iters=25, accents=False, dim=1)
    args = [a.replace(f"{d}/feats.scp,speech,kaldi_ark", f"{d}/wav.scp,speech,sound") for a in args]
    i = args.index("--encoder")
    args[i + 1] = "whisper"
    args = [a for j, a in enumerate(args) if not (a.startswith("--encoder_conf") or
                                                  (j > 0 and args[j - 1] == "--encoder_conf"))]
    args += ["--encoder_conf", f"whisper_dir={wdir}", "--model_conf", "frame_shift=6.25e-05"]
    LLMASRTask.main(cmd=args)
    exp = tmp_path / "exp"
    model, _ = LLMASRTask.build_model_from_file(exp / "config.yaml", exp / "valid.acc.ave.pth")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    infer_main(["--asr_train_config", str(exp / "config.yaml"), "--asr_model_file", str(exp / "valid.acc.ave.pth"),
                "--output_dir", str(tmp_path / "dec"), "--data_path_and_name_and_type", f"{d}/wav.scp,speech,sound"])
    assert read_kaldi(tmp_path / "dec" / "1best_recog" / "text") == text
    rtf = read_kaldi(tmp_path / "dec" / "rtf")
    assert float(rtf["audio_seconds"]) == pytest.approx(sum(int(v) for v in shape.values()) / 16000, rel=1e-3)


def test_yaml_config_and_help(work, tmp_path, capsys, caplog):
    """Training from a YAML file as a recipe does it, and --help of both entry points."""
    import yaml

    from espnet_hdmole.bin.llm_asr_train import main as train_main

    w, llm, data = work
    cfg = {"use_adapter": True, "adapter": "hdmole", "save_strategy": "required_grad_only",
           "adapter_conf": {"target_modules": ["projector.linear2"], "num_domains": 3, "rank": 2,
                            "global_router": "none", "activation": "dense"}}
    (tmp_path / "hd.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "exp"
    caplog.set_level("INFO")
    train_main(train_args(out, data, llm, epochs=1, iters=2) + ["--config", str(tmp_path / "hd.yaml")])
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["adapter"] == "hdmole" and written["adapter_conf"]["rank"] == 2
    report = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trainable parameters:")]
    assert report and "full fine-tuning of [projector]" in report[0]
    with pytest.raises(SystemExit) as e:
        train_main(["--help"])
    assert e.value.code == 0
    assert "hdmole" in capsys.readouterr().out
    from espnet_hdmole.bin.llm_asr_inference import get_parser

    text = get_parser().format_help()
    assert "--beam_size" in text and "real-time factor" in text


def test_encoder_cache_reuses_outputs_and_changes_nothing(work):
    """With a frozen encoder, cached encoder outputs give the same loss and skip the encoder."""
    from espnet_hdmole.asr.preprocessor import LLMASRPreprocessor

    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(w / "unused", data, llm,
                                                         extra=["--model_conf", "cache_encoder_outputs=true"]))
    model = LLMASRTask.build_model(args)
    model.train()
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    text = read_kaldi(data / "text")
    pre = LLMASRPreprocessor(False, llm)
    items = [(u, pre(u, {"speech": np.asarray(feats[u]), "text": text[u]})) for u in sorted(feats)]
    ids, batch = LLMASRTask.build_collate_fn(None, True)(items)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    # encoder still trainable: no caching
    model(**batch, utt_id=ids)
    assert len(calls) == 1 and not model._enc_cache
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    loss1, _, _ = model(**batch, utt_id=ids)
    loss2, _, _ = model(**batch, utt_id=ids)
    assert len(calls) == 2 and len(model._enc_cache) == len(ids)  # the second call used the cache
    torch.testing.assert_close(loss1, loss2)
    loss3, _, _ = model(**batch)  # no ids: computed afresh, same result (no dropout in the tiny encoder)
    torch.testing.assert_close(loss1, loss3)
    assert len(calls) == 3
    # a bound of half the batch's outputs: what no longer fits is computed again, the same loss
    from espnet_hdmole.asr.utterance_cache import UtteranceCache

    model._enc_cache = UtteranceCache(model._enc_cache.bytes / 2 / 2**20)
    loss4, _, _ = model(**batch, utt_id=ids)
    assert model._enc_cache.evictions > 0 and model._enc_cache.bytes <= model._enc_cache.max_bytes
    assert len(calls) == 4 and 0 < len(model._enc_cache) < len(ids)
    loss5, _, _ = model(**batch, utt_id=ids)  # part from the cache, the rest encoded again
    assert len(calls) == 5
    torch.testing.assert_close(loss1, loss4)
    torch.testing.assert_close(loss1, loss5)


def test_an_utterance_id_that_comes_back_with_another_input_is_encoded_again(work, caplog):
    """The caches are keyed on the id and the input: a validation set that reuses a training
    set's ids must not be given the training utterances' encoder outputs."""
    from espnet_hdmole.asr.preprocessor import LLMASRPreprocessor

    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(w / "unused", data, llm,
                                                         extra=["--model_conf", "cache_encoder_outputs=true"]))
    model = LLMASRTask.build_model(args)
    model.train()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    feats = dict(kaldiio.load_scp(str(data / "feats.scp")))
    text = read_kaldi(data / "text")
    pre = LLMASRPreprocessor(False, llm)
    ids = sorted(feats)
    others = ids[1:] + ids[:1]  # each id given another utterance's features
    collate = LLMASRTask.build_collate_fn(None, True)
    _, batch = collate([(u, pre(u, {"speech": np.asarray(feats[u]), "text": text[u]})) for u in ids])
    _, other = collate([(u, pre(u, {"speech": np.asarray(feats[o]), "text": text[u]})) for u, o in zip(ids, others)])
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    model(**batch, utt_id=ids)
    fresh, _, _ = model(**other)  # no ids: no cache
    with caplog.at_level(logging.WARNING):
        cached, _, _ = model(**other, utt_id=ids)
    torch.testing.assert_close(cached, fresh)
    assert len(calls) == 3 and model._enc_cache.mismatches == len(ids)
    assert sum("came with an input other than" in r.getMessage() for r in caplog.records) == 1
    again, _, _ = model(**other, utt_id=ids)  # the entries now hold the new inputs' outputs
    assert len(calls) == 3
    torch.testing.assert_close(again, fresh)


def test_token_dropout_corrupts_teacher_forced_inputs_only_in_training(work, tmp_path):
    """token_dropout replaces transcript tokens fed to the LLM by random ones in training; the
    targets, the speech and prompt positions, and evaluation are untouched."""
    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(
        train_args(tmp_path / "exp", data, llm, extra=["--model_conf", "token_dropout=0.5"]))
    model = LLMASRTask.build_model(args)
    _, batch = task_batch(args, data, train=False)
    seen = []
    model.llm.base_model.register_forward_pre_hook(lambda m, a, k: seen.append(k["inputs_embeds"].detach()),
                                                   with_kwargs=True)
    model.eval()
    clean_loss, _, _ = model(**batch)
    model.train()
    torch.manual_seed(0)
    model(**batch)
    clean, noisy = seen
    changed = (clean != noisy).any(-1)  # (B, L): positions whose input embedding was replaced
    ctx = model._context_embeddings(*model.project(*model.encode(batch["speech"], batch["speech_lengths"])))
    for b, c in enumerate(ctx):
        n_text = int(batch["text_lengths"][b])
        assert not changed[b, : c.shape[0]].any()  # prefix, speech and prompt stay
        frac = changed[b, c.shape[0]: c.shape[0] + n_text].float().mean()
        assert 0.0 < frac < 1.0 or n_text < 4
    assert changed.float().sum() / batch["text_lengths"].sum() > 0.25
    model.eval()
    again, _, _ = model(**batch)
    torch.testing.assert_close(clean_loss, again)
    with pytest.raises(ValueError, match="token_dropout"):
        LLMASRTask.build_model(LLMASRTask.get_parser().parse_args(
            train_args(tmp_path / "bad", data, llm, extra=["--model_conf", "token_dropout=1.0"])))


def test_a_training_step_looks_up_the_embedding_table_once(work, tmp_path):
    """The prefix, the prompt and every utterance's tokens are looked up in one call: where the
    table is trained (full fine-tuning, the source model), each call's backward writes a dense
    gradient of the whole table. The inputs the LLM reads are those of one lookup per piece."""
    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(tmp_path / "exp", data, llm))
    model = LLMASRTask.build_model(args)
    _, batch = task_batch(args, data, train=False)
    calls, seen = [], []
    model.llm.get_input_embeddings().register_forward_hook(lambda m, a, out: calls.append(a[0].shape))
    model.llm.base_model.register_forward_pre_hook(lambda m, a, k: seen.append(k["inputs_embeds"].detach()),
                                                   with_kwargs=True)
    model.train()
    loss, _, _ = model(**batch)
    loss.backward()
    assert len(calls) == 1
    emb = model.llm.get_input_embeddings()
    s, s_lens = model.project(*model.encode(batch["speech"], batch["speech_lengths"]))
    for b in range(len(s)):  # [prefix] [speech] [prompt] [tokens], then padding
        n = int(batch["text_lengths"][b])
        want = torch.cat([emb(model.prefix_ids), s[b, : s_lens[b]], emb(model.prompt_ids),
                          emb(batch["text"][b, :n].long())]).detach()
        torch.testing.assert_close(seen[0][b, : len(want)], want)


def test_the_model_marks_speech_text_and_padding_for_the_routing_statistics(work):
    """In training and in model_info's pass, the LLM's HDMoLE layers count their speech and text
    positions apart and leave padding out; the projector's count its valid speech positions."""
    from espnet2.layers.create_adapter import create_adapter

    from espnet_hdmole import PAD, SPEECH, TEXT, hdmole_layers

    w, llm, data = work
    args = LLMASRTask.get_parser().parse_args(train_args(w / "unused", data, llm, extra=SYSTEMS["hdmole"]))
    model = LLMASRTask.build_model(args)
    create_adapter(model, "hdmole", args.adapter_conf)
    ids, batch = task_batch(args, data)
    model(**batch, utt_id=ids)
    h, h_lens = model.encode_cached(batch["speech"], batch["speech_lengths"], None, (None, None))
    k = model.projector.stack
    s_lens = (h_lens + k - 1) // k  # the projector's output lengths (no CTC compression here)
    layers = dict(hdmole_layers(model))
    q = layers[next(n for n in layers if n.endswith("q_proj"))]
    kinds = q._last["kinds"].view(len(ids), -1)
    n_text = len(model.prefix_ids) + len(model.prompt_ids) + batch["text_lengths"]
    assert (kinds == SPEECH).sum(1).tolist() == s_lens.tolist()
    assert (kinds == TEXT).sum(1).tolist() == n_text.tolist()
    assert (kinds == PAD).sum() > 0  # utterances of different lengths: the batch has padding
    p1 = model.projector.linear1
    assert (p1._last["kinds"].view(len(ids), -1) == SPEECH).sum(1).tolist() == s_lens.tolist()


def test_several_gpus_in_one_process_are_refused_for_hdmole(work):
    """ESPnet runs --ngpu N > 1 without --multiprocessing_distributed as one process with
    DataParallel, whose replicas the HDMoLE layers cannot run (a KeyError deep in a replica, or an
    error wrapped in DataParallel's traceback): refused before anything starts, saying what to add."""
    from espnet_hdmole.errors import UserError

    w, llm, data = work
    with pytest.raises(UserError, match=r"--ngpu 2 without --multiprocessing_distributed true runs "
                                        r"torch.nn.DataParallel.*add --multiprocessing_distributed true"):
        run_main(w, data, llm, extra=["--ngpu", "2", "--use_adapter", "true", "--adapter", "hdmole",
                                      "--adapter_conf", "target_modules=['q_proj']"])

"""The n-gram LM for shallow fusion: Kneser-Ney estimation, the ARPA file, the scorer over an
LLM's tokens, and the fused search."""
import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_llm_dir  # noqa: E402

from espnet_hdmole.asr.decoding import beam_search, greedy_search  # noqa: E402
from espnet_hdmole.asr.llm_utils import load_causal_lm, load_tokenizer  # noqa: E402
from espnet_hdmole.errors import UserError  # noqa: E402
from espnet_hdmole.lm.kneser_ney import estimate, write_arpa  # noqa: E402
from espnet_hdmole.lm.ngram_scorer import NgramScorer, read_arpa  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1"
SENTENCES = ["早上好", "今天天气很好", "天气好", "早上天气很好", "你好", "今天好"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A tiny LLM directory with a character tokenizer."""
    return make_llm_dir(tmp_path_factory.mktemp("llm"), "".join(SENTENCES) + "世界")


def make_arpa(path, sentences, order):
    probs, backoffs = estimate([list(s) for s in sentences], order)
    with open(path, "w", encoding="utf-8") as f:
        write_arpa(f, probs, backoffs)
    return path


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_history_gets_a_distribution_over_the_tokens(tmp_path, tok_dir, order):
    tok = load_tokenizer(tok_dir)
    scorer = NgramScorer(make_arpa(tmp_path / "lm.arpa", SENTENCES, order), tok)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    # the LM's words: the characters it saw, </s> (eos) and <unk>, the tokenizer's own <unk>
    seen = sorted(set(ids("".join(SENTENCES))) | {tok.eos_token_id, tok.unk_token_id})
    for history in ["", "早", "早上", "今天天气", "天气很", "世界", "很很很"]:
        p = np.exp(scorer.vector(ids(history)).astype(np.float64))
        assert p[seen].sum() == pytest.approx(1.0, abs=1e-4), history
    # a token the LM never saw ("世") costs what <unk> costs
    assert scorer.vector([])[tok.convert_tokens_to_ids("世")] == pytest.approx(scorer.vector([])[tok.unk_token_id])


def test_kneser_ney_probabilities_by_hand(tmp_path, tok_dir):
    """Bigram KN on 'ab', 'ac' (words a, b, c): the figures worked out on paper."""
    probs, backoffs = estimate([["a", "b"], ["a", "c"]], 2)
    # unigram adjusted counts (distinct left contexts): a 1 (<s>), b 1, c 1, </s> 2 (b, c)
    # n1 = 3, n2 = 1 -> D1 = 3/5; S = 5; gamma = 0.6 * 4 / 5 = 0.48; uniform over a b c </s> <unk>
    d1, u = 3 / 5, 1 / 5
    g1 = d1 * 4 / 5
    assert 10 ** probs[1][("b",)] == pytest.approx((1 - d1) / 5 + g1 * u)
    assert 10 ** probs[1][("</s>",)] == pytest.approx((2 - d1) / 5 + g1 * u)
    assert 10 ** probs[1][("<unk>",)] == pytest.approx(g1 * u)
    # bigram raw counts: <s> a 2, a b 1, a c 1, b </s> 1, c </s> 1 -> n1 = 4, n2 = 1, D2 = 4/6
    d2 = 4 / 6
    g_a = d2 * 2 / 2
    assert 10 ** probs[2][("a", "b")] == pytest.approx((1 - d2) / 2 + g_a * 10 ** probs[1][("b",)])
    assert 10 ** backoffs[1][("a",)] == pytest.approx(g_a)
    assert ("<s>", "a") in probs[2] and ("b", "c") not in probs[2]


def test_arpa_reader_names_the_file_and_line(tmp_path, tok_dir):
    good = make_arpa(tmp_path / "lm.arpa", SENTENCES, 2).read_text(encoding="utf-8")
    grams = read_arpa(tmp_path / "lm.arpa")
    assert len(grams) == 3 and len(grams[1]) > 5
    cases = {
        "count.arpa": (good.replace("ngram 2=", "ngram 2=1", 1), "declares"),
        "noend.arpa": (good.replace("\\end\\", ""), "no \\end\\"),
        "number.arpa": (good.replace("\n-", "\nminus", 1), "not a number"),
        "text.arpa": ("hello\n" + good, "not an ARPA file"),
    }
    for name, (text, said) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=re.escape(str(tmp_path / name))) as e:
            read_arpa(tmp_path / name)
        assert said in str(e.value), name
    with pytest.raises(UserError, match="does not exist"):
        read_arpa(tmp_path / "missing.arpa")


def test_an_lm_of_another_tokenizer_is_refused(tmp_path, tok_dir):
    arpa = make_arpa(tmp_path / "latin.arpa", ["abc", "bcd", "cde"], 2)
    with pytest.raises(UserError, match="another tokenizer"):
        NgramScorer(arpa, load_tokenizer(tok_dir))


@pytest.fixture(scope="module")
def llm(tok_dir):
    return load_causal_lm(tok_dir).eval(), load_tokenizer(tok_dir)


def contexts(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = model.get_input_embeddings().embedding_dim
    return [torch.randn(4 + i, dim, generator=g) for i in range(n)]


@torch.no_grad()
def test_fusion_steers_the_search_and_weight_zero_changes_nothing(tmp_path, llm):
    model, tok = llm
    scorer = NgramScorer(make_arpa(tmp_path / "one.arpa", ["今天天气很好"], 3), tok)
    ctx = contexts(model)
    eos = tok.eos_token_id
    plain_g = greedy_search(model, ctx, eos, 12)
    plain_b = beam_search(model, ctx, eos, 12, 3)
    assert greedy_search(model, ctx, eos, 12, ngram=scorer, ngram_weight=0.0) == plain_g
    assert beam_search(model, ctx, eos, 12, 3, ngram=scorer, ngram_weight=0.0) == plain_b
    want = tok("今天天气很好", add_special_tokens=False)["input_ids"]
    assert plain_g[0][0] != want  # the random LLM alone does not say it
    for hyps in (greedy_search(model, ctx, eos, 12, ngram=scorer, ngram_weight=50.0),
                 beam_search(model, ctx, eos, 12, 3, ngram=scorer, ngram_weight=50.0)):
        assert [h for h, _ in hyps] == [want] * len(ctx)
    # the score is the LLM's log-probability plus the weighted n-gram log-probability
    w = 0.3
    (ids, score), = greedy_search(model, ctx[:1], eos, 12, ngram=scorer, ngram_weight=w)
    said = ids + [eos] if len(ids) < 12 else ids  # eos is scored when the hypothesis ended
    lm = sum(float(scorer.vector(ids[:i])[t]) for i, t in enumerate(said))
    llm_only = 0.0
    emb = torch.cat([ctx[0], model.get_input_embeddings()(torch.tensor(ids, dtype=torch.long))])
    logp = torch.log_softmax(model(inputs_embeds=emb[None]).logits[0].float(), -1)
    for i, t in enumerate(said):
        llm_only += float(logp[ctx[0].shape[0] - 1 + i, t])
    assert score == pytest.approx(llm_only + w * lm, abs=1e-3)


def test_train_ngram_lm_script(tmp_path, tok_dir):
    text = tmp_path / "text"
    text.write_text("".join(f"u{i} {s}\n" for i, s in enumerate(SENTENCES)), encoding="utf-8")
    plain = tmp_path / "plain.txt"
    plain.write_text("你好世界\n\n", encoding="utf-8")
    out = tmp_path / "ng" / "lm.arpa"
    cmd = [sys.executable, str(RECIPE / "local" / "train_ngram_lm.py"), "--llm_dir", str(tok_dir),
           "--train_text", str(text), "--plain_text", str(plain), "--valid_text", str(text),
           "--order", "3", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "6 transcripts + 1 plain sentences" in r.stderr and "perplexity" in r.stderr
    scorer = NgramScorer(out, load_tokenizer(tok_dir))
    assert scorer.order == 3
    assert math.exp(scorer.vector(load_tokenizer(tok_dir)("你好", add_special_tokens=False)["input_ids"])[
        load_tokenizer(tok_dir).convert_tokens_to_ids("世")]) > 0.1  # "你好世界" was read
    r = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "x.arpa"), "--train_text", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "nope" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "x.arpa").exists()


@pytest.mark.parametrize("order", [1, 3])
def test_compiled_tables_kept_beside_the_arpa_give_the_same_scores(tmp_path, tok_dir, order):
    from espnet_hdmole.lm.ngram_scorer import compiled_path

    tok = load_tokenizer(tok_dir)
    arpa = make_arpa(tmp_path / "lm.arpa", SENTENCES, order)
    fresh = NgramScorer(arpa, tok, compiled_cache=False)
    assert not compiled_path(arpa).exists()
    first = NgramScorer(arpa, tok)  # compiles and keeps the tables
    assert compiled_path(arpa).is_file()
    kept = NgramScorer(arpa, tok)  # loads them
    assert kept.order == fresh.order and kept.floor == fresh.floor and kept.backoff == fresh.backoff
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    histories = [ids(h) for h in ["", "早", "早上", "今天天气", "天气很", "世界", "很很很"]]
    want = fresh(histories, fresh.size + 3)
    assert torch.equal(first(histories, fresh.size + 3), want) and torch.equal(kept(histories, fresh.size + 3), want)
    # another ARPA file in the same place, or another tokenizer: the kept tables are not used
    make_arpa(arpa, SENTENCES[:3], order)
    assert torch.equal(NgramScorer(arpa, tok)(histories, fresh.size), NgramScorer(arpa, tok, compiled_cache=False)(histories, fresh.size))
    assert not torch.equal(NgramScorer(arpa, tok)(histories, fresh.size), want[:, :fresh.size])
    other = load_tokenizer(make_llm_dir(tmp_path / "llm2", "大" + "".join(SENTENCES) + "世界"))
    got, fresh_other = NgramScorer(arpa, other), NgramScorer(arpa, other, compiled_cache=False)
    assert got.size == fresh_other.size and torch.equal(got(histories, got.size), fresh_other(histories, got.size))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@torch.no_grad()
def test_greedy_and_beam_search_on_a_gpu_say_what_they_say_on_the_cpu(llm):
    """Greedy search kept its bookkeeping on the CPU and mixed it with the GPU's log-probabilities
    (torch.where of a CPU mask and a CUDA tensor); both searches now give the CPU's hypotheses.

    Both devices run the model in float64: in float32 their kernels round differently, and a near
    tie between two tokens of the tiny random model could then flip a choice."""
    model, tok = llm
    cpu = copy.deepcopy(model).double()
    ctx = [c.double() for c in contexts(model)]
    eos = tok.eos_token_id
    want_g, want_b = greedy_search(cpu, ctx, eos, 8), beam_search(cpu, ctx, eos, 8, 3)
    gpu = cpu.to("cuda")
    got_g = greedy_search(gpu, [c.cuda() for c in ctx], eos, 8)
    got_b = beam_search(gpu, [c.cuda() for c in ctx], eos, 8, 3)
    for got, want in ((got_g, want_g), (got_b, want_b)):
        assert [h for h, _ in got] == [h for h, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)

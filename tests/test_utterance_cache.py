"""The bounded per-utterance cache of the frozen encoder's outputs (espnet_hdmole.asr.utterance_cache)."""
import logging

import pytest
import torch

from espnet_hdmole.asr.utterance_cache import UtteranceCache, utterance_keys
from espnet_hdmole.errors import UserError

MB = 2**20


def test_cache_keeps_at_most_its_bound_dropping_the_least_recently_used(caplog):
    cache = UtteranceCache(1.0)  # 1 MB: three 0.4-MB entries do not fit
    x = {u: torch.zeros(MB // 10, dtype=torch.float32) for u in "abc"}  # 0.4 MB each
    cache.put("a", x["a"])
    cache.put("b", x["b"])
    assert cache.get("a") is x["a"]  # a is now more recent than b
    with caplog.at_level(logging.WARNING):
        cache.put("c", x["c"])
        cache.put("d", torch.zeros(MB // 10))
    assert "c" in cache and "d" in cache and "b" not in cache and "a" not in cache
    assert cache.bytes == 2 * 4 * (MB // 10) <= cache.max_bytes and cache.evictions == 2
    assert sum("encoder_cache_mb" in r.message for r in caplog.records) == 1  # said once


def test_an_entry_larger_than_the_bound_is_not_kept():
    cache = UtteranceCache(0.5)
    cache.put("small", torch.zeros(10))
    cache.put("big", torch.zeros(MB))  # 4 MB
    assert "big" not in cache and "small" in cache and cache.bytes == 40
    cache.put("small", torch.zeros(20))  # replacing an entry counts its new size only
    assert cache.bytes == 80 and len(cache) == 1


@pytest.mark.parametrize("bad", [0, -1, "big", True])
def test_a_bad_bound_names_the_key(bad):
    with pytest.raises(UserError, match="model_conf.encoder_cache_mb"):
        UtteranceCache(bad)


def test_an_entry_is_served_only_for_the_input_it_was_computed_from(caplog):
    cache = UtteranceCache(1.0)
    x = torch.ones(3)
    cache.put("a", x, (10, 1.5))
    assert cache.get("a", (10, 1.5)) is x
    with caplog.at_level(logging.WARNING):
        assert cache.get("a", (10, 2.5)) is None  # the same id, another input
        assert cache.get("a", (11, 1.5)) is None
    assert cache.mismatches == 2 and sum("'a'" in r.message for r in caplog.records) == 1  # said once
    y = torch.zeros(3)
    cache.put("a", y, (10, 2.5))  # replaced, counted once
    assert cache.get("a", (10, 2.5)) is y and cache.get("a", (10, 1.5)) is None and cache.bytes == 12


def test_utterance_keys_do_not_depend_on_the_batch_padding():
    torch.manual_seed(0)
    u = torch.randn(7, 4)
    padded = torch.cat([torch.randn(2, 9, 4), torch.zeros(1, 9, 4)])
    padded[2, :7] = u
    short = u[None]
    (_, sig_long), = utterance_keys(["u"], padded[2:], torch.tensor([7]))
    (_, sig_short), = utterance_keys(["u"], short, torch.tensor([7]))
    assert sig_long == sig_short == (7, u.double().sum().item())
    keys = utterance_keys(["a", "b", "c"], padded, torch.tensor([9, 5, 7]))
    assert [k[0] for k in keys] == ["a", "b", "c"] and keys[2][1] == sig_short
    assert keys[1][1] == (5, padded[1, :5].double().sum().item())


@pytest.mark.parametrize("ids", [["a"], ["ab", "cd", "ef"], "abc"])
def test_utterance_keys_need_one_id_per_utterance(ids):
    with pytest.raises(ValueError, match="one id"):
        utterance_keys(ids, torch.zeros(2, 5, 3), torch.tensor([5, 4]))

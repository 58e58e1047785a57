"""The projector between the speech encoder and the LLM (espnet_hdmole.asr.projector)."""
import torch

from espnet_hdmole.asr.projector import FrameStackProjector


def test_an_utterance_reads_no_frame_past_its_length():
    """Frames are stacked 4 at a time: the last position of an utterance of 7 frames stacks frames
    4-7, and frame 7 is padding. An encoder's outputs there are not zeros, so the projection used to
    depend on what the batch held past the utterance's length; now it is the utterance's alone."""
    torch.manual_seed(0)
    proj = FrameStackProjector(16, 8, stack=4)
    h, lens = torch.randn(2, 12, 16), torch.tensor([12, 7])
    zeroed = h.clone()
    zeroed[1, 7:] = 0.0
    out, out_lens = proj(h, lens)
    want, _ = proj(zeroed, lens)
    assert out_lens.tolist() == [3, 2]
    torch.testing.assert_close(out, want)
    alone, _ = proj(h[1:, :7], lens[1:])  # the utterance in a batch of its own
    torch.testing.assert_close(out[1, :2], alone[0])

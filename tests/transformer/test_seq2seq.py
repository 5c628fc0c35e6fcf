"""The encoder-decoder of "Attention Is All You Need": positions, shared embeddings, padding, cached generation."""

import math

import pytest
import torch

from transformer import Seq2Seq, Seq2SeqConfig
from transformer.seq2seq import sinusoidal_positions

TINY = dict(src_vocab_size=20, tgt_vocab_size=20, max_seq_len=32, d_model=32, n_heads=2, n_encoder_layers=1,
            n_decoder_layers=2, dropout=0.0)


def test_sinusoidal_positions():
    table = sinusoidal_positions(10, 8)
    assert table[3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 8)))
    assert table[3, 3].item() == pytest.approx(math.cos(3 / 10000 ** (2 / 8)))


def test_shared_embeddings_and_shapes():
    model = Seq2Seq(Seq2SeqConfig(**TINY, share_embeddings=True))
    assert model.tgt_embed is model.src_embed and model.generator.weight is model.src_embed.weight
    src, tgt = torch.randint(3, 20, (2, 7)), torch.randint(3, 20, (2, 5))
    assert model(src, tgt).shape == (2, 5, 20)
    model.loss(src, tgt).backward()
    with pytest.raises(ValueError, match="share_embeddings"):
        Seq2Seq(Seq2SeqConfig(**{**TINY, "tgt_vocab_size": 21}, share_embeddings=True))


def test_source_padding_is_ignored():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(**TINY)).double().eval()
    src = torch.randint(3, 20, (1, 6))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # pad id 0 -> masked by default
    tgt = torch.randint(3, 20, (1, 4))
    torch.testing.assert_close(model(src, tgt), model(padded, tgt))


@pytest.mark.parametrize("sampling", [False, True])
def test_generation_with_and_without_cache_gives_the_same_tokens(sampling):
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(**TINY)).double()
    src = torch.randint(3, 20, (3, 6))
    src[1, 4:] = 0
    kwargs = dict(do_sample=sampling, top_k=5)
    cached = model.generate(src, 10, generator=torch.Generator().manual_seed(2), **kwargs)
    uncached = model.generate(src, 10, use_cache=False, generator=torch.Generator().manual_seed(2), **kwargs)
    assert cached[:, 0].eq(1).all()
    assert torch.equal(cached, uncached)


def test_generation_stops_where_every_row_has_ended(monkeypatch):
    """The end-of-sequence check waits for the device every few steps only; the output still ends at the step where
    the last row produced EOS (2), as a check per step would, and rows that ended are padded (0)."""
    model = Seq2Seq(Seq2SeqConfig(**TINY)).eval()
    script = iter([[5, 2], [2, 9]] + [[7, 7]] * 30)  # row 1 ends at step 0, row 0 at step 1

    def scripted_next_token(logits, **_):
        return torch.tensor(next(script))[:, None]

    monkeypatch.setattr("transformer.seq2seq.next_token", scripted_next_token)
    assert model.generate(torch.randint(3, 20, (2, 5)), 20).tolist() == [[1, 5, 2], [1, 2, 0]]
    script = iter([[5, 6]] * 30)  # no row ends: all 12 steps
    assert model.generate(torch.randint(3, 20, (2, 5)), 12).shape == (2, 13)

"""The GPT-style decoder: shapes, tied embeddings, convergence fused vs reference, generation with and without cache."""

import pytest
import torch

import transformer
from transformer import GPT, GPTConfig

TINY = dict(vocab_size=64, max_seq_len=48, d_model=32, n_heads=2, n_layers=2)


def test_forward_shapes_tied_embeddings_and_loss():
    model = GPT(GPTConfig(**TINY))
    assert model.lm_head.weight is model.wte.weight
    idx = torch.randint(0, 64, (2, 9))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 9, 64) and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.state_dict().keys() == GPT(GPTConfig(**TINY)).state_dict().keys()


def test_causality_future_tokens_do_not_change_the_past():
    model = GPT(GPTConfig(**TINY, norm="rms")).double()
    idx = torch.randint(0, 64, (2, 10))
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 64
    torch.testing.assert_close(model(idx)[0][:, :6], model(changed)[0][:, :6])


def _train(backend, steps=30):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_layers": 1, "d_model": 16}), backend=backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 64, (8, 2, 13), generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(steps):
        batch = data[step % 8]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses)


def test_convergence_fused_and_reference_loss_curves_agree():
    fused, reference = _train("auto"), _train("torch")
    assert fused[-5:].mean() < fused[:5].mean() - 0.2  # it learns
    torch.testing.assert_close(fused, reference, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("sampling", [False, True])
def test_generation_with_and_without_cache_gives_the_same_tokens(sampling):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).double()
    idx = torch.randint(0, 64, (3, 4))
    kwargs = dict(do_sample=sampling, temperature=0.8, top_k=10)
    cached = model.generate(idx, 12, generator=torch.Generator().manual_seed(5), **kwargs)
    uncached = model.generate(idx, 12, use_cache=False, generator=torch.Generator().manual_seed(5), **kwargs)
    assert cached.shape == (3, 16) and torch.equal(cached[:, :4], idx)
    assert torch.equal(cached, uncached)


def test_generation_limits_and_sampling_arguments():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(torch.zeros(1, 40, dtype=torch.long), 10)
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert transformer.next_token(logits).item() == 1
    picks = {transformer.next_token(logits, do_sample=True, top_k=2).item() for _ in range(50)}
    assert picks <= {1, 3}
    with pytest.raises(ValueError, match="`temperature`"):
        transformer.next_token(logits, do_sample=True, temperature=0.0)


@pytest.mark.parametrize("sampling", [False, True])
def test_static_cache_generation_gives_the_dynamic_cache_tokens(sampling):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).double()
    idx = torch.randint(0, 64, (3, 4))
    kwargs = dict(do_sample=sampling, temperature=0.8, top_k=10)
    dynamic = model.generate(idx, 12, generator=torch.Generator().manual_seed(5), **kwargs)
    static = model.generate(idx, 12, static_cache=True, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(static, dynamic)


def test_decode_step_over_static_caches_matches_the_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).double().eval()
    idx = torch.randint(0, 64, (2, 9))
    full = model(idx)[0]
    caches = model.new_static_cache(2, 9)
    steps = [model.decode_step(idx[:, :4], caches)] + [model.decode_step(idx[:, i:i + 1], caches) for i in range(4, 9)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 3:])
    assert all(c.length.tolist() == [9, 9] for c in caches)


def test_static_generation_limits():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(torch.zeros(1, 40, dtype=torch.long), 10, static_cache=True)
    with pytest.raises(ValueError, match="`cuda_graph`"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), 3, cuda_graph=True)
    with pytest.raises(ValueError, match="`max_len`"):
        model.new_static_cache(1, 49)

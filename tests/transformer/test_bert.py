"""The BERT-style encoder: padding masks, token types, the masked-LM head and its loss."""

import torch

from transformer import BERT, BERTConfig

TINY = dict(vocab_size=100, max_seq_len=16, d_model=32, n_heads=2, n_layers=2, dropout=0.0)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    model = BERT(BERTConfig(**TINY)).double().eval()
    ids = torch.randint(1, 100, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, 6:] = 0
    other = ids.clone()
    other[0, 6:] = torch.randint(1, 100, (4,))  # different content under the padding
    logits, _ = model(ids, attention_mask=mask)
    logits_other, _ = model(other, attention_mask=mask)
    torch.testing.assert_close(logits[0, :6], logits_other[0, :6])
    torch.testing.assert_close(logits[1], logits_other[1])


def test_token_types_and_mlm_loss():
    torch.manual_seed(0)
    model = BERT(BERTConfig(**TINY))
    ids = torch.randint(1, 100, (2, 8))
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    logits, loss = model(ids, token_type_ids=types, labels=labels)
    assert logits.shape == (2, 8, 100)
    expected = torch.nn.functional.cross_entropy(logits[:, 2], ids[:, 2])
    torch.testing.assert_close(loss, expected)
    assert not torch.equal(model(ids, token_type_ids=types)[0], model(ids)[0])
    loss.backward()
    assert model.word_embeddings.weight.grad is not None and model.token_type_embeddings.weight.grad is not None


def test_backend_reaches_every_fused_module():
    model = BERT(BERTConfig(**TINY), backend="torch")
    assert model.encoder.layers[0].self_attn.backend == "torch" and model.mlm_norm.backend == "torch"

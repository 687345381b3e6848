"""Growing a model's vocabulary: added tokens get deterministic rows, original rows never move."""

from __future__ import annotations

import torch


def embedding_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    """The input embedding and, when untied, the LM head: every matrix with a row per token."""
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    return [inp] if out is None or out.weight is inp else [inp, out.weight]


def resize_embeddings(model: torch.nn.Module, vocab_size: int) -> list[int]:
    """Grow the embedding matrices to ``vocab_size``; new rows are the mean of the old rows.

    Deterministic (transformers' default samples the new rows at random) and
    harmless: with the adapter off, the mean row's logit is tiny, so the base
    model's answers do not change. Returns the ids of the new rows.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return []
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    new_ids = list(range(old, vocab_size))
    with torch.no_grad():
        for matrix in embedding_matrices(model):
            matrix[old:] = matrix[:old].mean(dim=0, keepdim=True)
    return new_ids


def add_special_token(model: torch.nn.Module, tokenizer, token: str) -> int:
    """Add ``token`` as a special token (if new), grow the embeddings to match and return its id."""
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([token], special_tokens=True)
    resize_embeddings(model, len(tokenizer))
    return int(tokenizer.convert_tokens_to_ids(token))

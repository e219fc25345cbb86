"""
Prompts: a label with its CLIP conditional embedding, the checks a prompt list must pass, and
the least-recently-used cache of text embeddings. torch, no ROS.
"""

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

# Text embeddings kept for reuse; the least recently used beyond this are forgotten, so a
# client sending ever-new prompts cannot grow the cache.
TEXT_CACHE_SIZE = 1024
# Labels are published as uint8 with 0 reserved for the background.
MAX_PROMPTS = 255


# eq=False: prompts compare by identity; field-wise == on a tensor has no single truth value.
@dataclass(frozen=True, eq=False)
class Prompt:
    """A segmentation prompt: a label and its CLIP conditional embedding."""

    label: str
    kind: str
    embedding: torch.Tensor


def check_prompts(prompts: Sequence[Prompt], embedding_size: int) -> None:
    """Raise ValueError unless ``prompts`` is 1..MAX_PROMPTS prompts of this model."""
    if isinstance(prompts, Prompt) or not isinstance(prompts, Sequence):
        raise ValueError('prompts must be a list of Prompt objects')
    if len(prompts) == 0:
        raise ValueError('no prompts given: pass at least one Prompt')
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(
            f'{len(prompts)} prompts given, at most {MAX_PROMPTS} fit in uint8 labels')
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, Prompt):
            raise ValueError(f'prompt {index} is a {type(prompt).__name__}, not a Prompt')
        if not isinstance(prompt.embedding, torch.Tensor):
            raise ValueError(f'prompt {index} has no embedding tensor')
        if prompt.embedding.ndim != 1 or prompt.embedding.shape[0] != embedding_size:
            raise ValueError(
                f"prompt {index} ('{prompt.label}') has an embedding of shape "
                f'{tuple(prompt.embedding.shape)}; this model needs ({embedding_size},): '
                'all prompts must come from the same model')


def check_texts(texts: Sequence[str]) -> list[str]:
    """Return ``texts`` as a list; ValueError unless each is a non-blank string."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError("texts must be a list of strings, e.g. ['a cup'], not a string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f'text prompt {index} is not a string: {text!r}')
        if not text.strip():
            raise ValueError(f'text prompt {index} is empty or only whitespace')
    return list(texts)


class TextEmbeddingCache:
    """
    Embeddings of texts by exact string; ``encode`` embeds the missing ones in one batch.

    Bounded by :data:`TEXT_CACHE_SIZE`, least recently used first out. Not thread-safe: the
    engine calls it under its lock.
    """

    def __init__(self, encode: Callable[[list[str]], torch.Tensor]) -> None:
        self._encode = encode
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.encoder_calls = 0

    def get(self, texts: list[str]) -> list[torch.Tensor]:
        missing = [text for text in dict.fromkeys(texts) if text not in self._entries]
        if missing:
            features = self._encode(missing)
            self.encoder_calls += 1
            for text, row in zip(missing, features):
                self._entries[text] = row.clone()
        embeddings = [self._entries[text] for text in texts]
        for text in texts:
            self._entries.move_to_end(text)
        while len(self._entries) > TEXT_CACHE_SIZE:
            self._entries.popitem(last=False)
        return embeddings

    def clear(self) -> None:
        self._entries.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

"""Longest common subsequence of two event lists, where "equal" means a judge labelled the pair "same"."""

from __future__ import annotations

from collections.abc import Sequence


def lcs_align(relations: Sequence[Sequence[str]], equal: str = "same") -> list[tuple[int, int]]:
    """The longest order-preserving set of ``equal`` pairs between predicted and reference events.

    Args:
        relations: ``relations[i][j]`` is the label of (predicted event ``i``, reference event ``j``).
        equal: the label that counts as a match.

    Returns:
        The matched ``(i, j)`` pairs in increasing order of both indices; its length is the LCS length.
        Among equally long alignments the one matching the earliest predicted events is returned, so the
        result is deterministic.
    """
    n = len(relations)
    m = len(relations[0]) if n else 0
    if any(len(row) != m for row in relations):
        raise ValueError("relations must be a rectangular matrix")
    # table[i][j] = LCS length of pred[i:] and ref[j:] (suffixes, so the walk below goes forwards).
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = table[i], table[i + 1]
        rel = relations[i]
        for j in range(m - 1, -1, -1):
            if rel[j] == equal:
                row[j] = below[j + 1] + 1
            else:
                row[j] = max(below[j], row[j + 1])
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if relations[i][j] == equal and table[i][j] == table[i + 1][j + 1] + 1:
            pairs.append((i, j))
            i += 1
            j += 1
        elif table[i][j + 1] >= table[i + 1][j]:
            j += 1
        else:
            i += 1
    return pairs


def lcs_length(relations: Sequence[Sequence[str]], equal: str = "same") -> int:
    """Length of :func:`lcs_align`."""
    return len(lcs_align(relations, equal))

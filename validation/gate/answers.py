"""What a model *says*: does a greedy answer give the expected target?

The gate, the demo's answer table and ``factsmith ask`` judge an edit by the text the model generates, not by
a probability that moved. One comparison for all of them, :func:`says`:

1. both texts are whitespace-normalised: every run of whitespace (spaces, tabs, newlines, and the Unicode
   spaces ``str.split`` knows) becomes one space, and the ends are stripped;
2. the answer must *begin* with the target, character for character (case-sensitive);
3. and the target must end there as a word: the answer's next character, if any, is not a letter or digit
   ("Paris." and "Paris, France" say "Paris"; "Parisian" does not).

The tokenization does not matter: an answer spelled with other tokens than the target's own still counts.
"""

from __future__ import annotations


def normalise(text: str) -> str:
    """``text`` with each run of whitespace made one space, and no space at either end."""
    return " ".join(text.split())


def mentions(answer: str, target: str) -> bool:
    """Whether ``answer`` holds ``target`` as whole words anywhere ("the State of Mexico" mentions "Mexico";
    "Mexican" does not). The gate uses it to tell an edited fact said in other words from another fact."""
    a, t = normalise(answer), normalise(target)
    if not t:
        return False
    start = a.find(t)
    while start >= 0:
        end = start + len(t)
        if (start == 0 or not a[start - 1].isalnum()) and (end == len(a) or not a[end].isalnum()):
            return True
        start = a.find(t, start + 1)
    return False


def says(answer: str, target: str) -> bool:
    """Whether ``answer`` (generated text) begins with ``target`` as whole words (see the module docstring)."""
    a, t = normalise(answer), normalise(target)
    if not t or not a.startswith(t):
        return False
    rest = a[len(t):]
    return not rest or not rest[0].isalnum()

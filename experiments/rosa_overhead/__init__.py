"""Step time of windowed + ROSA over windowed-only; saved-for-backward bytes; overlap (README.md in this
folder)."""

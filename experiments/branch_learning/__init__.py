"""Which options make the ROSA branch learn recall at small scale, and how well does each gradient option
agree with finite differences? (README.md in this folder)"""

"""Does the counterfactual estimate agree with finite differences of the loss, per stream and per option?
(README.md in this folder)"""

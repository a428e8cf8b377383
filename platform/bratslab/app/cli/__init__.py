"""One module per ``bratslab <group>``: each parses its options, calls the stages and prints.

Stage modules are imported inside the command functions, so ``bratslab --help`` imports none of
torch, Ray or MLflow.
"""

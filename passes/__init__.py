"""Graph-to-graph optimisation passes (installed as ``graphnn.passes``).

The pass manager and the passes (folding, CSE, DCE, simplification, fusion, memory planning)
arrive with the passes issue; ``graphnn.verify.verify`` is the invariant checker they run under.
"""

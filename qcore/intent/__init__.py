"""The request-intention gate's learning half (seed paper 003): synthetic CERT r4.2-shaped insider-threat
logs plus qlink's own request log, the AU/AD/RF and behaviour features, the quantum feed-forward network,
classical baselines and the user-split evaluation. Pure: randomness comes in as a numpy Generator.
"""

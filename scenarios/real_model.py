"""A real architecture: a tiny random-init Llama whose every attention call is messages.

The model is built from a config (2 layers, 4 heads of dimension 16, grouped-query
attention with 2 key/value heads, RoPE; no download) and registered with
``routing_sim.hf``. Its logits are checked against the same model on PyTorch SDPA, it
generates with a KV cache (each step is one query node routing to every cached key), and
the last step's routing table is printed for every layer and head, with the messages and
bytes each layer cost. Needs the hf extra: pip install 'routing_sim[hf]'.
"""


def main() -> None:
    from routing_sim.hf.story import load, tell

    ours, sdpa, _ = load("llama", layers=2)
    print(tell(ours, sdpa, "routing is all you need", new_tokens=3))


if __name__ == "__main__":
    main()

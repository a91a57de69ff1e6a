"""Data: tokenizers, prompt datasets and token batches that feed rollouts and updates.

`jaxrl_llm.data.tokenizer` holds the tokenizer protocol shared by the whole package, a built-in
character tokenizer for tests and CPU-sized experiments, and a wrapper around Hugging Face
`tokenizer.json` files.
"""

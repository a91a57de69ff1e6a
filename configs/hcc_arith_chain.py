"""HCC on ArithChain traces: score each trace with a model, cut the post-conclusion continuation.

    python -c "import numpy as np; from jaxrl_llm.envs import arith_chain_traces as t; \
rng = np.random.default_rng(0); t.export_traces_jsonl('runs/hcc_arith_chain/traces.jsonl', \
[t.make_trace(rng, num_ops=3, error_rate=0.2, correction_rate=0.7, continuation_rate=0.6) for _ in range(64)])"
    python -m jaxrl_llm.cli hcc --config configs/hcc_arith_chain.py \
        --config.model.init_from=orbax:runs/my_sft_run

Writes `hcc_edited.jsonl` (the edited records, ready as an SFT `data.path`) and `hcc_report.json` (how
much was cut; agreement with the traces' ground-truth boundaries) under `output_dir`. With an empty
`model.init_from` the scorer is a random tiny decoder (a smoke test, not a meaningful score).
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.output_dir = "runs/hcc_arith_chain"

    # The scoring model: "" (a random init of the fields below), "hf:PATH" or "orbax:RUN_DIR".
    c.model = ConfigDict()
    c.model.preset = "tiny"
    c.model.init_from = ""
    c.model.vocab_size = 128
    c.model.hidden_size = 128
    c.model.intermediate_size = 256
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32

    c.mesh = ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    c.distributed = ConfigDict()
    c.distributed.enabled = False
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = -1
    c.distributed.process_id = -1

    # The tokenizer the scoring model reads the records with ("char" or a tokenizer / checkpoint folder).
    c.data = ConfigDict()
    c.data.tokenizer = "char"
    c.data.chat = False
    c.data.system_prompt = ""

    c.hcc = ConfigDict()
    c.hcc.input = "runs/hcc_arith_chain/traces.jsonl"  # JSONL of {prompt, completion[, boundary]} records
    c.hcc.output = ""  # edited records; "" = <output_dir>/hcc_edited.jsonl
    c.hcc.report = ""  # JSON report; "" = <output_dir>/hcc_report.json
    c.hcc.tau = 0.3  # the mismatch threshold (the spec's fallback)
    # > 0: fit tau on the first N records that carry a ground-truth `boundary` (hcc.fit_tau); the report's
    # agreement.held_out covers the other labelled records.
    c.hcc.fit_tau_records = 0
    c.hcc.batch_size = 8  # records per teacher-forced forward
    c.hcc.uncertainty = "entropy"  # per-token uncertainty: "entropy" (the spec's) or "nll"
    return c

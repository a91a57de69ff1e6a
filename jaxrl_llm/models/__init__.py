"""Decoder models (Qwen2, Qwen3, Llama 3; attention or registered mixer layers) and HF checkpoint I/O."""

from jaxrl_llm.models.cache import DecoderCache, KVCache
from jaxrl_llm.models.config import ModelConfig, preset
from jaxrl_llm.models.decoder import Decoder, init_cache
from jaxrl_llm.models.hf import load_pretrained, save_pretrained
from jaxrl_llm.models.layers import register_mixer

__all__ = ["Decoder", "DecoderCache", "KVCache", "ModelConfig", "init_cache", "load_pretrained", "preset",
           "register_mixer", "save_pretrained"]

"""Offline scripted LLM: an OpenAI-compatible server answering MetaGPT's flow from a script."""

from runner.scripted_llm.server import FAULTS, ScriptedLLM

__all__ = ["FAULTS", "ScriptedLLM"]

"""Turn handlers: an audio end-of-turn model between the VAD and the ASR (optional stage)."""

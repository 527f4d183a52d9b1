"""Speech-to-speech handlers (``s2s``): one model in place of ASR + LLM + TTS."""

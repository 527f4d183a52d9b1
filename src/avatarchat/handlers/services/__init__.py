"""What the handlers of one cloud service share across stages: its client set-up, key
lookup, error messages and the bridge from its SDK into asyncio (DashScope: CosyVoice and
Paraformer; OpenAI's audio API: speech and transcription)."""

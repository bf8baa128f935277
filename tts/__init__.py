"""Speech engines behind one interface (see tts.base). Nothing here depends on Pipecat."""

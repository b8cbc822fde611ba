"""Health, metrics and the model list: what operators and both SDKs' model listings call."""

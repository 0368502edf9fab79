"""Caption metrics for facial-dynamics benchmarks: TEM, AutoDQ, CIDEr, ROUGE-L, VideoChatGPT (no Ray)."""

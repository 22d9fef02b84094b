"""Members in other formats: GGUF files for llama.cpp, Ollama and LM Studio. One member as one file written tensor by
tensor (gguf.py), each family's llama.cpp layout (gguf_model.py), the tokenizer as llama.cpp reads it (gguf_vocab.py),
a fast reader of a GGUF file's keys (gguf_metadata.py), and the stage over a family, member or checkpoint
(members.py). It reads checkpoints through pruning/; publish/ reads its records for the cards."""

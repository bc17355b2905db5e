"""Model providers: the provider port (`llm`), the OpenAI-compatible provider and the scripted one."""

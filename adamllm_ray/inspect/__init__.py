"""`adamllm inspect RUN_DIR [RUN_DIR2]`: a local web page over synthesis and evaluation output folders,
so a person can look at the synthesized tasks (and the models' answers) before spending GPU-days on them.
Pages read only what they show: an id index is built once per run and cached in a temp folder."""

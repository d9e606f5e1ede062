"""The command-line tools, one thin module each: absl flags at module level, a `main` that calls
one library function, `run()` for the console script (`bert-jax-X`); `python -m bert_jax.cli.X`
is the same tool and `--help` lists its flags. Shared helpers live in `common.py`.

  pretrain   pretraining.train_and_evaluate     finetune   finetune.finetune_and_evaluate
  prepare    data.prepare                       predict    predict.predict_file
  vocab      vocab.train_vocab                  convert    convert.convert
  embed      sentence_embedding.embed_checkpoint_file
  fill_mask  mask_filling.fill_mask_checkpoint
  aot        aot.analyze                        demo       demo.run_demo
"""

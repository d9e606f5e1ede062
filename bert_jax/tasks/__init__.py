"""Fine-tuning tasks: classification / regression, NER and SQuAD."""

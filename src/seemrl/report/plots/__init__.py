"""One module per figure of the report; `style` gives every figure the same colours and scales."""

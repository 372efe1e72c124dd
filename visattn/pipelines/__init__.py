"""What joins a trained model to its uses: loading it back from its files, validation samples, overlays and the
faithfulness report. This layer sits above training, data and export, so none of them needs to know the others."""

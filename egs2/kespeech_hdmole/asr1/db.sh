# Corpus locations. Leave KESPEECH empty to make the offline demo corpus instead.
# KeSpeech (licensed: https://github.com/KeSpeech/KeSpeech) root, the directory holding Tasks/ and Audio/:
KESPEECH=${KESPEECH:-}
# Optional Kaldi-style dir (wav.scp, text) of standard Mandarin for the source-domain test set.
SOURCE_DIR=${SOURCE_DIR:-}

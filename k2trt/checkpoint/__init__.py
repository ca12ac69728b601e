"""Checkpoint toolkit: reading, checking, synthesizing and converting K2 checkpoints — one pipeline for every target.

Modules, bottom up (each imports only those above it, plus ``k2trt.spec``, ``errors`` and ``fsio``):

- ``names``     the HF tensor name of every role (``q_b``, ``expert_down`` ...) and the role of every name;
- ``files``     safetensors headers and the index (headers only), ``ShardWriter`` (streaming, atomic, hashed),
                whole-file copy (``copy_file_range``), link and hash (BLAKE3);
- ``fp8``       block-FP8 math: (de)quantisation, scale checks, the numpy FP8 → BF16 lookup-table path;
- ``quant4``    the 4-bit math of the routed experts: NVFP4 and W4A8 INT4 (through nvidia-modelopt);
- ``formats``   the table of storage formats of a linear weight (bf16, fp8, nvfp4, int4): each part's HF suffix,
                decode/encode; the HF-named inventory of a spec; which format a stored weight is in;
- ``reader``    the one reader: positional reads of whole tensors, row ranges and one rank's slice, dequantised
                from any format (convert, verify and the reference model read through it; inspect reads headers);
- ``quantcfg``  the quantization metadata files (hf_quant_config.json, quant_cfg.json, inline config);
- ``inspect``   header-only validation (config ↔ tensors ↔ index ↔ files, tokenizer files);
- ``synth``     the tiny K2 (and the 1 TB layout as sparse files);
- ``targets``   the table of conversion targets (trtllm, bf16, fp8-block, nvfp4, w4a8) and their metadata files;
- ``manifest``  the resume manifest (``k2trt-manifest.json``);
- ``plan``      a conversion planned from headers: one op per source tensor, the output layout (``--dry-run``);
- ``stream``    each op's bytes as bounded pieces (chunked FP8 ↔ BF16, kernel copies, whole-tensor re-encodes);
- ``verify``    ``--verify``: every output tensor against the source, then layout and hashes;
- ``convert``   the driver: workers, in-order atomic shards, resume, metadata, config.json last;

Owns every HF tensor name. Imports nothing from ``reference`` (calibration, which runs the model, lives there) and
torch only inside functions, so headers can be read on a login node.
"""

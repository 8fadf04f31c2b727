"""The catalogue of handled bad inputs (issue 15): every case names the test that shows it handled.

Run one case: ``pytest "tests/bad_inputs/<file>::<test>"``. The test below keeps the catalogue honest: every
named test exists, and every test in this folder is catalogued.
"""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).parent

CATALOGUE: dict[str, dict[str, str]] = {
    "data loss": {
        "merge --output_dir equals/inside --vla_path or --adapter_dir, or contains them": "test_data_loss.py::test_merge_refuses_an_out_overlapping_its_inputs",
        "merge --output_dir a run directory (foreign) even with --overwrite true; an earlier merge only with it": "test_data_loss.py::test_merge_refuses_a_foreign_out_and_needs_overwrite_for_its_own",
        "save_adapter into a foreign folder, an earlier adapter, or a base checkpoint": "test_data_loss.py::test_save_adapter_refuses_a_foreign_directory",
        "save_checkpoint onto a foreign step folder; stale .tmp folders of a killed write": "test_data_loss.py::test_save_checkpoint_refuses_a_foreign_step_directory_and_cleans_stale_temporaries",
        "atomic_dir: foreign directory": "test_data_loss.py::test_atomic_dir_refuses_a_foreign_directory_and_keeps_it",
        "atomic_dir: another kind; previous output without overwrite": "test_data_loss.py::test_atomic_dir_refuses_another_kind_and_a_previous_output_without_overwrite",
        "atomic_dir: empty directory taken, a file refused": "test_data_loss.py::test_atomic_dir_takes_an_empty_directory_and_refuses_a_file",
        "outputs private to the owner whatever the umask": "test_data_loss.py::test_outputs_follow_the_umask",
        "safetensors weights (merge, adapter, head, checkpoints) written 0600 whatever the umask": "test_data_loss.py::test_weights_follow_the_umask",
        "merge --overwrite true deleted files the user put in the output folder": "test_data_loss.py::test_merge_overwrite_refuses_files_it_did_not_write",
        "convert --to rlds writing inside the LeRobot dataset it reads": "test_data_loss.py::test_convert_never_writes_into_the_lerobot_dataset_it_reads",
        "corrupt newest checkpoint blocks resume": "test_checkpoints.py::test_resume_falls_back_to_the_newest_intact_checkpoint_naming_the_broken_one",
        "bare error naming no file for a damaged checkpoint": "test_checkpoints.py::test_loading_a_damaged_checkpoint_names_the_file_and_the_fix",
        "keep_last=1 deletes the only intact checkpoint": "test_checkpoints.py::test_an_unreadable_new_checkpoint_never_prunes_the_older_one",
        "SIGTERM loses every step since the last checkpoint": "test_training_runs.py::test_sigterm_saves_a_checkpoint_and_resume_continues_from_it",
        "finetune --run_dir equal to --vla_path, or a symlink to it (base statistics overwritten)": "test_data_loss.py::test_finetune_refuses_a_run_dir_that_is_its_base_checkpoint",
        "eval, cache-targets, label-latent-actions, train-base, pretrain writing onto or inside an input": "test_data_loss.py::test_every_writing_command_refuses_an_output_overlapping_its_inputs",
        "disk full while a checkpoint is written: unclear error": "test_divergence.py::test_a_full_disk_names_the_file_the_space_needed_and_the_intact_checkpoint",
        "a resume killed after recording its change overwrites the config history": "test_resume.py::test_a_resume_killed_after_recording_its_change_never_overwrites_the_history",
    },
    "silently wrong": {
        "inf action / NaN state / inf joint state in the writer": "test_non_finite.py::test_writer_refuses_non_finite_values",
        "all-NaN action-free episodes still accepted": "test_non_finite.py::test_writer_still_takes_an_all_nan_action_free_episode",
        "NaN/inf in data reaching the statistics": "test_non_finite.py::test_statistics_refuse_non_finite_data",
        "NaN in dataset_statistics.json": "test_non_finite.py::test_loading_statistics_with_nan_is_refused_with_the_file_name",
        "q01 == q99 (computed and loaded)": "test_non_finite.py::test_degenerate_statistics_warn_when_computed_and_when_loaded",
        "NaN/inf through normalization": "test_non_finite.py::test_normalization_refuses_non_finite_statistics_and_values",
        "NaN pixels / NaN actions out of predict_action": "test_non_finite.py::test_predict_action_refuses_nan_pixels_and_non_finite_actions",
        "NaN action sent to MuJoCo, recorded as a plain failure": "test_non_finite.py::test_a_non_finite_action_never_reaches_the_simulator_and_is_counted_as_an_error",
        "action-free data without a StaMo target trains on loss 0": "test_training_runs.py::test_action_free_data_without_a_stamo_target_fails_fast",
        "horizon longer than every episode": "test_training_runs.py::test_horizon_longer_than_every_episode_fails_fast",
        "most samples degenerate: a warning": "test_training_runs.py::test_mostly_degenerate_samples_warn",
        "samples with a clamped future frame counted as degenerate": "test_training_runs.py::test_supervision_check_counts_clamped_future_frames_as_degenerate",
        "resume with another lora_rank; changed lr taken without a word; config.yaml overwritten": "test_training_runs.py::test_resume_refuses_a_model_change_and_records_allowed_changes",
        "adapter weights without adapter_config.json (load_adapter, eval --adapter_dir, merge)": "test_clear_errors.py::test_adapter_weights_without_adapter_config_are_refused_everywhere",
        "prompt longer than the model's context": "test_clear_errors.py::test_prompts_longer_than_the_context_are_refused",
        "1x1 and other far-too-small images": "test_clear_errors.py::test_images_far_below_the_input_size_are_refused",
        "LIBERO 128 px and 256 px frames": "test_clear_errors.py::test_libero_frames_are_accepted_unchanged",
        "cache-targets rerun keeps a truncated shard": "test_clear_errors.py::test_cache_targets_rerun_re_encodes_a_truncated_shard",
        "provenance.json deleted: evaluation crop guessed, base model unchecked": "test_provenance.py::test_a_removed_provenance_file_is_unknown_never_guessed",
        'provenance fields of the wrong type (a string "false" read as true)': "test_provenance.py::test_provenance_fields_of_the_wrong_type_are_refused",
        "adapter loaded onto another checkpoint of the same architecture": "test_provenance.py::test_an_adapter_is_refused_on_another_checkpoint_of_the_same_architecture",
        "released OFT directory without its proprio projector: proprio ignored": "test_released_oft.py::test_a_missing_proprio_projector_is_never_ignored_silently",
        "released OFT head and proprio projector of different steps": "test_released_oft.py::test_a_head_and_a_projector_of_different_steps_are_refused",
        "NaN released OFT head (NaN chunks); truncated head file ('[Errno 22] Invalid argument')": "test_released_oft.py::test_a_non_finite_or_truncated_head_file_is_refused_naming_file_and_tensor",
        "episodes that share file_path (upstream's LIBERO builder) get each other's StaMo targets": "test_datasets.py::test_episodes_that_share_a_file_path_each_get_their_own_targets",
        "a dataset holding one episode twice": "test_datasets.py::test_a_dataset_holding_one_episode_twice_is_refused",
        "writing another episode under a file_path already staged (dropped)": "test_datasets.py::test_the_writer_refuses_another_episode_under_a_staged_file_path",
        "episodes written task by task: train[95%:] is one task": "test_datasets.py::test_episodes_collected_task_by_task_are_written_interleaved",
        "dataset of an older writer marked disableShuffling (upstream's trainer refuses it)": "test_datasets.py::test_a_dataset_an_older_writer_marked_ordered_warns_with_the_fix",
        "NaN input or NaN loss weight: a non-finite loss trains on": "test_divergence.py::test_a_non_finite_loss_stops_the_step_before_any_weight_changes",
        "lr far too high: the run diverges, exits 0 and saves NaN weights": "test_divergence.py::test_a_diverging_fine_tuning_run_stops_naming_the_step_and_saves_nothing",
        "NaN adapter weights saved, loaded and merged": "test_divergence.py::test_non_finite_weights_are_never_saved_loaded_or_merged",
        "NaN weights written to or resumed from a checkpoint": "test_divergence.py::test_checkpoints_with_non_finite_weights_are_never_written_or_resumed",
        "NaN states in a target-cache shard": "test_divergence.py::test_a_target_cache_shard_with_nan_states_is_refused_when_read",
        "decay_gamma -1, lr/eps 0 or inf, NaN/inf loss weights, betas >= 1, NaN crop ratio": "test_divergence.py::test_numeric_fields_out_of_range_are_refused_where_declared",
        "a prompt with an empty instruction reaching predict_action": "test_divergence.py::test_a_prompt_without_an_instruction_never_reaches_predict_action",
        "horizon longer than every labeled episode: the head learns the way to the episode's end": "test_training_runs.py::test_a_horizon_longer_than_every_episode_is_refused_with_the_episode_lengths",
        "optimizer change on resume (weight decay, ...) logged but not applied": "test_resume.py::test_each_optimizer_change_on_resume_takes_effect",
        "resume with another StaMo encoder than the head learned": "test_resume.py::test_resuming_with_another_stamo_encoder_is_refused",
        "base training resumed with another --model size kept training the checkpoint's model": "test_resume.py::test_resuming_base_training_with_another_model_size_is_refused",
        "interrupted 128 px collection never resumes (demo, study); report says 256 px": "test_resume.py::test_an_interrupted_128_px_collection_resumes_through_the_demo_command",
    },
    "unclear errors": {
        "missing tokenizer.json said to install sentencepiece; truncated tokenizer.json": "test_clear_errors.py::test_missing_tokenizer_names_the_file_not_sentencepiece",
        "truncated preprocessor_config.json": "test_clear_errors.py::test_truncated_preprocessor_config_names_itself",
        "truncated model / adapter safetensors, invalid config.json / stamo_adapter_config.json": "test_clear_errors.py::test_truncated_weights_and_configs_name_themselves",
        "truncated tfrecord shard": "test_clear_errors.py::test_a_truncated_tfrecord_shard_names_the_dataset_and_the_fix",
        "truncated dataset_statistics.json": "test_clear_errors.py::test_truncated_statistics_file_names_itself",
        "numeric CLI value that does not parse": "test_clear_errors.py::test_a_numeric_value_that_does_not_parse_names_its_field",
        "split with no episodes (bare StopIteration)": "test_training_runs.py::test_a_split_with_no_episodes_says_so",
        "--help of every stamo-vla command, recipe and eval script ('%' in a help string)": "test_clear_errors.py::test_every_entry_point_answers_help",
        "released OFT from_pretrained(output_loading_info=True) crashes": "test_released_oft.py::test_output_loading_info_returns_the_model_and_its_info_as_transformers_does",
        "upstream statistics with a 7-D zero proprio block: bare numpy broadcast error": "test_datasets.py::test_upstream_statistics_without_a_proprio_block_name_the_file_and_shapes",
        "target cache keyed by file_path (format 1): misleading errors": "test_datasets.py::test_a_cache_keyed_by_file_path_is_refused_with_the_rebuild_command",
    },
    "security and sharing": {
        "runs/merged typo taken as a Hub repo id": "test_clear_errors.py::test_a_missing_local_path_with_one_slash_is_never_a_hub_id",
    },
    "processes and concurrency": {
        "SIGTERM to study / demo leaves its stage command running": "test_processes.py::test_sigterm_to_a_study_driver_leaves_no_child_running",
        "kill -9 of the study / demo driver leaves its stage command running": "test_processes.py::test_a_killed_driver_takes_its_stage_command_with_it",
        "two writers in one run directory": "test_processes.py::test_a_second_writer_of_a_locked_run_directory_is_refused",
    },
}


def _tests_in_folder() -> set[str]:
    found = set()
    for file in HERE.glob("test_*.py"):
        tree = ast.parse(file.read_text())
        found |= {
            f"{file.name}::{node.name}"
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    return found


def test_the_catalogue_names_every_test_and_only_existing_ones():
    named = {test for cases in CATALOGUE.values() for test in cases.values()}
    existing = _tests_in_folder() - {
        "test_catalogue.py::test_the_catalogue_names_every_test_and_only_existing_ones"
    }
    assert named - existing == set(), "catalogued tests that do not exist"
    assert existing - named == set(), "tests missing from the catalogue"

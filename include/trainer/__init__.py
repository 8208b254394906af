"""The model's whole life before deployment: data, network, training, serving export, instance files.

Public API for DAG tasks (every location is a gs:// URI; results are small JSON):

    data.generate_dataset(output_uri, *, num_examples, image_size, seed) -> summary dict (idempotent)
    task.train(data_uri, job_dir, *, epochs, batch_size, learning_rate, seed, generate_if_missing) -> metrics
    export.export_variants(job_dir, export_uri, *, variants) -> {variant: gs:// SavedModel dir}
    instances.write_instances(variant, images_or_source, output_uri, ...) -> summary dict

Modules import TensorFlow: import them inside tasks, never at DAG parse time.
"""

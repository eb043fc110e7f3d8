use engine::gguf::GgufFile;
use engine::model::Model;
use engine::tokenizer::Tokenizer;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let t0 = std::time::Instant::now();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let model = Model::load(
        &file,
        if std::env::var("EXACT").is_ok() {
            engine::model::Numerics::Exact
        } else {
            engine::model::Numerics::LlamaCpp
        },
        &|_, _| {},
    )
    .unwrap();
    eprintln!("load {:?}", t0.elapsed());
    let arg = std::env::args().nth(2);
    let prompt = arg.as_deref().unwrap_or("Once upon a time, there was a little robot who");
    let ids = tok.encode(prompt, tok.add_bos(), false).unwrap();
    eprintln!("{ids:?}");
    let mut cache = model.new_cache(256);
    let t1 = std::time::Instant::now();
    let mut logits = model.forward(&ids, &mut cache).unwrap();
    eprintln!("prefill {:?}", t1.elapsed());
    let n = model.config().n_vocab;
    let mut out = vec![];
    let t2 = std::time::Instant::now();
    for _ in 0..32 {
        let last = &logits[logits.len() - n..];
        let t = engine::generate::argmax(last);
        let mut sorted: Vec<(f32, usize)> = last.iter().copied().zip(0..).collect();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        eprintln!(
            "{:?} {:?} {:?} margin {:.4}",
            tok.decode(&[sorted[0].1 as u32], false),
            tok.decode(&[sorted[1].1 as u32], false),
            sorted[0].0,
            sorted[0].0 - sorted[1].0
        );
        out.push(t);
        logits = model.forward(&[t], &mut cache).unwrap();
    }
    eprintln!("decode {:?} for 32", t2.elapsed());
    println!("{}{}", prompt, tok.decode(&out, false));
}

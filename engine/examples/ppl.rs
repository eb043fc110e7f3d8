use engine::gguf::GgufFile;
use engine::model::Model;
use engine::tokenizer::Tokenizer;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let text = std::fs::read_to_string(std::env::args().nth(2).unwrap()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let model = Model::load(&file, engine::model::Numerics::Exact, &|_, _| {}).unwrap();
    let ids = tok.encode(&text, tok.add_bos(), false).unwrap();
    eprintln!("{} tokens, add_bos {}", ids.len(), tok.add_bos());
    let t = std::time::Instant::now();
    let r = engine::perplexity::perplexity(&model, &ids, 512, None, None, &mut |i, n, p| {
        eprint!("[{i}/{n}]{p:.4} ")
    })
    .unwrap();
    eprintln!("\nPPL {:.4} in {:?}", r.ppl, t.elapsed());
}
